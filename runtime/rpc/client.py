"""llama.cpp's RPC backend, client side: split a model's layers over RPC workers.

Nothing here is a protocol of our own. The client side is ggml's RPC device, and the worker
(`rpc_worker`) ggml's `ggml_backend_rpc_start_server`, both from `libggml-rpc.so`, which
`_rpc_reg` loads with `ggml_backend_load` into the libggml that libllama links to (as
`engine.start_backend` does for the CPU variant); their functions come from
`ggml_backend_reg_get_proc_address`. Before ggml connects to a worker, `rpc_protocol` checks
it with the protocol's HELLO: ggml-rpc ends the whole process (GGML_ABORT) when a worker
cannot be reached.

Client (`--rpc host:port,host:port`):

    endpoints = rpc_endpoints.parse_endpoints(text)  # RpcError if malformed: before any load
    engine.set_verbose(verbose)            # first: installs the engine's abort callback
    engine.start_backend(cpu.choose(...).path)
    devices = rpc.add_servers(endpoints)   # checks each worker (HELLO), then registers it
    offload = rpc.plan_offload(devices, weights, include_local=..., n_layer=...)
    # engine.Model.__init__, after its own `params.n_gpu_layers = 0` and load_mode, right
    # before llama_model_load_from_file(_ptr):
    offload.apply(params)                  # and hold `offload` as long as the model

`add_servers` also replaces the engine's abort message for aborts that come from ggml-rpc
(a worker that stops mid-generation): one line naming the worker, exit code 1.
"""

from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from runtime.engine.devices.registry import KINDS
from runtime.engine.devices.registry import (
    ggml as ggml,  # also rpc.ggml(), for the worker and tests
)
from runtime.rpc import lost
from runtime.rpc.endpoints import MAX_SERVERS, RpcError, format_endpoint
from runtime.rpc.protocol import CHECK_TIMEOUT, check_endpoint

# --------------------------------------------------------------------------- ggml plumbing

_rpc_reg_handle: Optional[int] = None
_added = lost.ADDED  # endpoint -> its devices, registered once


def rpc_library() -> Path:
    """libggml-rpc.so: beside libllama, or in site-packages/bin with the CPU variants."""
    from runtime.engine.devices.variants import variant_dirs

    for directory in variant_dirs():
        path = directory / "libggml-rpc.so"
        if path.exists():
            return path
    raise RpcError("this llamapyz has no RPC backend (libggml-rpc.so is not in the bundle)")


def _rpc_reg() -> int:
    """The RPC backend's registry entry, loaded once into the libggml libllama uses."""
    global _rpc_reg_handle
    if _rpc_reg_handle is None:
        g = ggml()
        reg = g.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            path = rpc_library()
            reg = g.ggml_backend_load(str(path).encode())
            if not reg:
                raise RpcError(f"cannot load the RPC backend {path}")
        _rpc_reg_handle = int(reg)
    return _rpc_reg_handle


def proc(name: str, prototype: Any) -> Any:
    """The RPC backend's function `name`, as `prototype` (a ctypes.CFUNCTYPE)."""
    address = ggml().ggml_backend_reg_get_proc_address(_rpc_reg(), name.encode())
    if not address:
        raise RpcError(f"the RPC backend has no {name}")
    return prototype(address)


_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)


# --------------------------------------------------------------------------- client


def add_servers(endpoints: Sequence[tuple[str, int]], timeout: float = CHECK_TIMEOUT) -> list[int]:
    """Check and register each worker; return its devices (ggml_backend_dev_t), in order.

    Call after `engine.set_verbose` and `engine.start_backend`. Each worker is checked with
    `check_endpoint` first (RpcError naming it), then `ggml_backend_rpc_add_server` connects
    and `ggml_backend_register` lists its devices, so llama.cpp and `devices_summary` see them.
    A worker added before is not checked or registered again. Also installs the abort message
    that names a worker lost later (see `runtime.rpc.lost`).
    """
    for host, port in endpoints:
        if (host, port) not in _added:
            check_endpoint(host, port, timeout)
    lost.install_abort_message(ggml())  # before ggml connects: a worker may stop after its check
    add = proc("ggml_backend_rpc_add_server", _ADD_SERVER)
    g = ggml()
    devices: list[int] = []
    for host, port in endpoints:
        if (host, port) not in _added:
            reg = add(format_endpoint(host, port).encode())
            if not reg:
                raise RpcError(f"the RPC worker {format_endpoint(host, port)} offers no device")
            g.ggml_backend_register(reg)
            _added[(host, port)] = [
                int(g.ggml_backend_reg_dev_get(reg, i))
                for i in range(int(g.ggml_backend_reg_dev_count(reg)))
            ]
        devices += _added[(host, port)]
    return devices


@dataclass
class Offload:
    """What `apply` writes into a llama_model_params, and the ctypes arrays it points to.

    `devices` is the NULL-terminated ggml_backend_dev_t array, `tensor_split` the per-device
    weights (llama_max_devices() floats; llama.cpp copies them at load), `n_gpu_layers` how
    many of the model's n_layer + 1 offloadable units (the repeating layers, then the output
    layer) go to the devices; the first layers left over, and the input embedding, stay on
    the local CPU.
    """

    devices: Any
    tensor_split: Any
    n_gpu_layers: int
    local_layers: Optional[int] = None  # how many units stay on this machine, when asked
    local_backends: tuple[str, ...] = ()  # this machine's GPU backends in it, for -fa auto

    def apply(self, params: Any) -> None:
        """Set devices, n_gpu_layers, split_mode (by layer) and tensor_split on `params`.

        Call it on the struct the engine passes to llama_model_load_from_file(_ptr), after the
        engine's own settings (it sets n_gpu_layers = 0). llama.cpp reads the two arrays during
        the load (it copies tensor_split, and the device list into the model) but keeps the
        dangling pointers in the model's params: hold this object as long as the model.
        """
        from runtime.engine.decoding import model as engine

        params.devices = ctypes.cast(self.devices, ctypes.c_void_p).value
        params.n_gpu_layers = self.n_gpu_layers
        params.split_mode = engine.bindings().LLAMA_SPLIT_MODE_LAYER
        params.tensor_split = ctypes.cast(self.tensor_split, ctypes.POINTER(ctypes.c_float))


def plan_offload(
    devices: Sequence[int],
    weights: Optional[Sequence[float]] = None,
    *,
    include_local: bool = False,
    n_layer: Optional[int] = None,
) -> Offload:
    """How to split a model over `devices` (from add_servers) and, if asked, this machine.

    `weights`: one number per device, plus one last for this machine when `include_local`
    (`--tensor-split 3,1,1` style; only the ratios count); None gives each an equal share.
    Without `include_local` every layer goes to the workers (n_gpu_layers = -1, "all");
    with it, this machine keeps its share of the n_layer + 1 units, so `n_layer` (the
    model's block count, `layer_count`) is needed.
    """
    if not devices:
        raise RpcError("no RPC devices to split the model over")
    if len(devices) > MAX_SERVERS:
        raise RpcError(f"llama.cpp splits a model over at most {MAX_SERVERS} devices")
    count = len(devices) + (1 if include_local else 0)
    shares = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(shares) != count:
        raise RpcError(
            f"the split has {len(shares)} weights for {count} devices"
            + (" (the workers, then this machine)" if include_local else "")
        )
    if any(not math.isfinite(w) or w < 0 for w in shares) or sum(shares) <= 0:
        raise RpcError("the split's weights must be numbers >= 0, and not all 0")
    n_gpu_layers, local_layers = -1, None
    if include_local:
        if n_layer is None or n_layer < 1:
            raise RpcError("keeping a share of the model here needs its layer count")
        units = n_layer + 1
        local_layers = min(units, round(units * shares[-1] / sum(shares)))
        n_gpu_layers = units - local_layers
        shares = shares[:-1]  # all 0 here means local_layers == units: nothing offloaded
    device_array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
    split_array = (ctypes.c_float * MAX_SERVERS)(*shares)
    return Offload(device_array, split_array, n_gpu_layers, local_layers)


def apply_to_params(
    params: Any,
    devices: Sequence[int],
    weights: Optional[Sequence[float]] = None,
    *,
    include_local: bool = False,
    n_layer: Optional[int] = None,
) -> Offload:
    """`plan_offload(...)` then `.apply(params)`; hold the result until the model has loaded."""
    offload = plan_offload(devices, weights, include_local=include_local, n_layer=n_layer)
    offload.apply(params)
    return offload


def layer_count(path: Path, offset: int = 0) -> int:
    """The model's `<arch>.block_count`, read from the GGUF header at `offset` in `path`."""
    # GGUF value types of a fixed size, by their struct format; 8 is a string, 9 an array
    fixed = {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }

    try:
        with open(path, "rb") as fh:
            fh.seek(offset)

            def take(fmt: str) -> Any:
                size = struct.calcsize("<" + fmt)
                data = fh.read(size)
                if len(data) != size:
                    raise EOFError
                return struct.unpack("<" + fmt, data)[0]

            def text() -> str:
                data = fh.read(take("Q"))
                return data.decode("utf-8", "replace")

            if fh.read(4) != b"GGUF" or take("I") < 2:
                raise ValueError
            take("Q")  # tensor count
            arch, counts = "", {}
            for _ in range(take("Q")):
                key, kind = text(), take("I")
                if kind in fixed:
                    value = take(fixed[kind])
                    if key.endswith(".block_count"):
                        counts[key] = int(value)
                elif kind == 8:
                    value = text()
                    if key == "general.architecture":
                        arch = value
                elif kind == 9:
                    item, n = take("I"), take("Q")
                    if item in fixed:
                        fh.seek(struct.calcsize("<" + fixed[item]) * n, 1)
                    elif item == 8:
                        for _ in range(n):
                            fh.seek(take("Q"), 1)
                    else:
                        raise ValueError
                else:
                    raise ValueError
                if arch and f"{arch}.block_count" in counts:
                    return counts[f"{arch}.block_count"]
    except (OSError, EOFError, ValueError, struct.error):
        pass
    raise RpcError(f"cannot read the layer count of the model in {path}")


def devices_summary() -> list[str]:
    """One line per device ggml has registered (name, description, type, memory), for --system-info.

    Asking an RPC device for its memory is a call to its worker: call this after add_servers.
    """
    g = ggml()
    lines = []
    for i in range(int(g.ggml_backend_dev_count())):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (g.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
        what = (g.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        kind = KINDS.get(int(g.ggml_backend_dev_type(dev)), "device")
        reg = g.ggml_backend_dev_backend_reg(dev)
        if reg and g.ggml_backend_reg_name(reg) == b"RPC":
            kind = "RPC worker"
        memory = (
            f"{free.value / 2**20:,.0f} MiB free of {total.value / 2**20:,.0f} MiB"
            if total.value
            else "memory unknown"
        )
        lines.append(f"{name}: {what} ({kind}, {memory})")
    return lines
