// A GPU backend that is present but broken, for tests/test_gpu_broken.py: a real ggml backend
// (built against the vendored llama.cpp's ggml headers, loaded as libggml-vulkan.so) with one
// device of the GPU type, "Vulkan0", that computes on the CPU and then goes wrong as
// BROKEN_GPU says:
//   wrong   (the default) every graph's last result comes back reversed: wrong numbers
//   crash   the first graph it computes traps (SIGILL)
//   none    the backend has no device at all
// Each load of the library appends a line to the file BROKEN_GPU_LOG names, if any, so that
// a test can count which processes loaded it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend-impl.h"
#include "ggml-backend.h"
#include "ggml.h"

static const char *mode(void) {
    const char *m = getenv("BROKEN_GPU");
    return m && *m ? m : "wrong";
}

static struct ggml_backend_device device;
static struct ggml_backend_buffer_type buffer_type;

static const char *buft_name(ggml_backend_buffer_type_t buft) {
    (void)buft;
    return "Broken";
}

static ggml_backend_buffer_t buft_alloc(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer) {
        buffer->buft = buft;  // host memory, ggml's CPU buffer, but this device's
    }
    return buffer;
}

static size_t buft_alignment(ggml_backend_buffer_type_t buft) {
    (void)buft;
    return ggml_backend_buft_get_alignment(ggml_backend_cpu_buffer_type());
}

static bool buft_is_host(ggml_backend_buffer_type_t buft) {
    (void)buft;
    return true;
}

static const char *backend_name(ggml_backend_t backend) {
    (void)backend;
    return "Vulkan0";
}

static void backend_free(ggml_backend_t backend) {
    ggml_backend_free((ggml_backend_t)backend->context);
    free(backend);
}

static enum ggml_status backend_compute(ggml_backend_t backend, struct ggml_cgraph *graph) {
    if (strcmp(mode(), "crash") == 0) {
        __builtin_trap();
    }
    enum ggml_status status = ggml_backend_graph_compute((ggml_backend_t)backend->context, graph);
    struct ggml_tensor *last = ggml_graph_node(graph, -1);
    if (status == GGML_STATUS_SUCCESS && last->type == GGML_TYPE_F32 && ggml_is_contiguous(last)) {
        float *x = (float *)last->data;
        for (int64_t i = 0, j = ggml_nelements(last) - 1; i < j; i++, j--) {
            float t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
    }
    return status;
}

static const char *dev_name(ggml_backend_dev_t dev) {
    (void)dev;
    return "Vulkan0";
}

static const char *dev_description(ggml_backend_dev_t dev) {
    (void)dev;
    return "Broken GPU (computes wrong numbers)";
}

static void dev_memory(ggml_backend_dev_t dev, size_t *free_bytes, size_t *total) {
    (void)dev;
    *free_bytes = *total = (size_t)4 << 30;
}

static enum ggml_backend_dev_type dev_type(ggml_backend_dev_t dev) {
    (void)dev;
    return GGML_BACKEND_DEVICE_TYPE_GPU;
}

static void dev_props(ggml_backend_dev_t dev, struct ggml_backend_dev_props *props) {
    memset(props, 0, sizeof(*props));
    props->name = dev_name(dev);
    props->description = dev_description(dev);
    dev_memory(dev, &props->memory_free, &props->memory_total);
    props->type = dev_type(dev);
}

static ggml_backend_t dev_init(ggml_backend_dev_t dev, const char *params) {
    (void)params;
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    ggml_backend_t backend = calloc(1, sizeof(*backend));
    static ggml_guid guid = {0xb7, 0x0c, 0xe2, 0x5e};
    backend->guid = &guid;
    backend->iface.get_name = backend_name;
    backend->iface.free = backend_free;
    backend->iface.graph_compute = backend_compute;
    backend->device = dev;
    backend->context = cpu;
    return backend;
}

static ggml_backend_buffer_type_t dev_buffer_type(ggml_backend_dev_t dev) {
    (void)dev;
    return &buffer_type;
}

static bool dev_supports_op(ggml_backend_dev_t dev, const struct ggml_tensor *op) {
    (void)dev;
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    return cpu && ggml_backend_dev_supports_op(cpu, op);
}

static bool dev_supports_buft(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft) {
    (void)dev;
    return buft == &buffer_type;
}

static const char *reg_name(ggml_backend_reg_t reg) {
    (void)reg;
    return "Vulkan";
}

static size_t reg_count(ggml_backend_reg_t reg) {
    (void)reg;
    return strcmp(mode(), "none") == 0 ? 0 : 1;
}

static ggml_backend_dev_t reg_device(ggml_backend_reg_t reg, size_t index) {
    (void)reg;
    return index == 0 ? &device : NULL;
}

static struct ggml_backend_reg reg = {
    .api_version = GGML_BACKEND_API_VERSION,
    .iface = {.get_name = reg_name, .get_device_count = reg_count, .get_device = reg_device},
};

__attribute__((visibility("default"))) ggml_backend_reg_t ggml_backend_init(void) {
    const char *log = getenv("BROKEN_GPU_LOG");
    FILE *f = log ? fopen(log, "a") : NULL;
    if (f) {
        fputs("loaded\n", f);
        fclose(f);
    }
    buffer_type.iface.get_name = buft_name;
    buffer_type.iface.alloc_buffer = buft_alloc;
    buffer_type.iface.get_alignment = buft_alignment;
    buffer_type.iface.is_host = buft_is_host;
    buffer_type.device = &device;
    device.iface.get_name = dev_name;
    device.iface.get_description = dev_description;
    device.iface.get_memory = dev_memory;
    device.iface.get_type = dev_type;
    device.iface.get_props = dev_props;
    device.iface.init_backend = dev_init;
    device.iface.get_buffer_type = dev_buffer_type;
    device.iface.supports_op = dev_supports_op;
    device.iface.supports_buft = dev_supports_buft;
    device.reg = &reg;
    return &reg;
}
