"""GPU offload on lavapipe (Mesa's Vulkan driver on the CPU, the GPU of every machine without
one): layers reported and placed, distributions close to the CPU's, the server on the GPU,
auto layers for a model bigger than the device, and every fallback with its line and code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime.engine.devices.variants import gpu_build_dir
from tests.conftest import (
    ROOT,
    assert_clean_error,
    build_session_pyz,
    image_bytes,
    pack,
    run_pyz,
    write_tiny_projector,
)

VULKAN = gpu_build_dir() / "libggml-vulkan.so"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VULKAN.is_file(),
        reason=f"the Vulkan backend is not built ({VULKAN}: run make install)",
    ),
]
PROMPT = ("-p", "The capital of France is", "-n", "4", "--temp", "0")
NO_GPU = "no GPU found (Vulkan: no device; CUDA: not in this file): running on the CPU"


@pytest.fixture(scope="session")
def shader_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mesa's shader cache, shared by the session: lavapipe compiles ggml's shaders once."""
    return tmp_path_factory.mktemp("mesa")


@pytest.fixture(autouse=True)
def lavapipe(monkeypatch: pytest.MonkeyPatch, shader_cache: Path) -> None:
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "0")  # ggml hides CPU-type devices otherwise
    monkeypatch.setenv("MESA_SHADER_CACHE_DIR", str(shader_cache))


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.strip().splitlines()


def test_all_layers_and_part_of_them_on_lavapipe(smollm2_pyz: Path) -> None:
    every = run_pyz(smollm2_pyz, *PROMPT, "-ngl", "99")
    assert every.returncode == 0, every.stderr
    assert "offloaded 31/31 layers to Vulkan0 (llvmpipe" in every.stderr
    assert every.stdout.startswith(" Paris")
    part = run_pyz(smollm2_pyz, *PROMPT, "-ngl", "10")
    assert part.returncode == 0, part.stderr
    assert "offloaded 10/31 layers to Vulkan0 (llvmpipe" in part.stderr
    auto = run_pyz(smollm2_pyz, *PROMPT)  # -ngl auto: SmolLM2 fits in lavapipe's 2 GiB
    assert "offloaded 31/31 layers to Vulkan0" in auto.stderr
    cpu = run_pyz(smollm2_pyz, *PROMPT, "-ngl", "0")
    assert "-ngl 0: running on the CPU" in lines(cpu)


COMPARE = r"""
import json, sys
from pathlib import Path
from runtime.engine.devices import cpu, gpu, gpu_selftest, offload
from runtime.engine.decoding import model as engine
from runtime.sources.source import ModelSource
engine.set_verbose(False)
engine.start_backend(cpu.choose().path)
device = gpu.load("Vulkan", gpu.carried()["Vulkan"], keep_on_disk=False)[0]
path = Path(sys.argv[1])
source = ModelSource(path, 0, path.stat().st_size, str(path))
text = "The capital of France is Paris, and the capital of Italy is Rome. Both cities"
def logits(handles, layers):
    with engine.Model(source, n_ctx=256, n_threads=2, offload=offload.make_offload(handles, layers)) as m:
        return m.logits_after(m.tokenize(text)[:16])
ref = logits([], 0)
print(json.dumps({n: gpu_selftest.compare(ref, logits([device.handle], n)) for n in (99, 10)}))
"""


def test_the_projector_runs_on_the_models_gpu_unless_told_not_to(
    tmp_path: Path, smollm2: Path, session_cache: Path
) -> None:
    projector = write_tiny_projector(tmp_path / "proj.gguf", width=576)
    picture = tmp_path / "a.png"
    picture.write_bytes(image_bytes("png", 40, 30, seed=1))
    pyz = tmp_path / "v.pyz"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(session_cache))
    built = pack("build", str(smollm2), "--mmproj", str(projector), "-o", str(pyz), env=env)
    assert built.returncode == 0, built.stderr
    seen = ("--image", str(picture), "-p", "hi", "-n", "2", "-ngl", "99", "--verbose")
    on_gpu = run_pyz(pyz, *seen)
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert "clip_ctx: CLIP using Vulkan0 backend" in on_gpu.stderr  # mtmd's own word
    assert "(embedded projector proj.gguf), on the GPU" in on_gpu.stderr
    on_cpu = run_pyz(pyz, *seen, "--no-mmproj-offload")
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "clip_ctx: CLIP using CPU backend" in on_cpu.stderr
    assert "(embedded projector proj.gguf), on the CPU" in on_cpu.stderr
    assert "offloaded 31/31 layers to Vulkan0" in on_cpu.stderr  # the model stays on the GPU


def test_distributions_on_lavapipe_are_the_cpus(smollm2: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", COMPARE, str(smollm2)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    for layers, (kl, agree) in json.loads(out.stdout.strip().splitlines()[-1]).items():
        assert kl < 0.05, (layers, kl)
        assert agree >= 0.9, (layers, agree)


def test_the_server_answers_on_the_gpu(smollm2_pyz: Path) -> None:
    from tests.test_server import Server

    srv = Server(smollm2_pyz, "-ngl", "99", "-c", "512")
    try:
        assert "offloaded 31/31 layers to Vulkan0" in srv.banner
        with urllib.request.urlopen(srv.url + "/v1/models", timeout=60) as listing:
            model = json.loads(listing.read())["data"][0]["id"]
        body = json.dumps(
            {
                "model": model,
                "prompt": "The capital of France is",
                "max_tokens": 4,
                "temperature": 0,
            }
        )
        request = urllib.request.Request(
            srv.url + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as reply:
            answer = json.loads(reply.read())
        assert answer["choices"][0]["text"].startswith(" Paris")
    finally:
        srv.stop()


def test_speculation_on_lavapipe_gives_the_same_text(smollm2_pyz: Path) -> None:
    """Drafts verified in Vulkan batches: the text of --spec-type none at temperature 0."""
    import re

    from tests.test_speculate import CODE

    args = ("-p", CODE, "-n", "16", "--temp", "0", "-ngl", "99", "--verbose")
    on = run_pyz(smollm2_pyz, *args)
    off = run_pyz(smollm2_pyz, *args, "--spec-type", "none")
    assert on.returncode == off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert "offloaded 31/31 layers to Vulkan0 (llvmpipe" in on.stderr
    assert on.stdout == off.stdout and "count" in on.stdout
    drafted = re.search(r"speculation \(ngram\): drafted (\d+) tokens, accepted (\d+)", on.stderr)
    assert drafted and int(drafted[2]) > 0, on.stderr[-2000:]
    assert "speculation (" not in off.stderr


def write_big_gguf(path: Path, n_layer: int = 28, n_embd: int = 2048, n_ff: int = 5632) -> Path:
    """A llama GGUF of about 3 GB (F16, all zeros): its tensor data is a hole in a sparse
    file, so it is written in a moment."""
    import gguf

    # Every byte as a fallback token, as real SentencePiece vocabularies have (the GGUF check
    # refuses one without them: llama.cpp would crash on text outside the vocabulary).
    pieces = ["\u2581the", "\u2581", *(chr(c) for c in range(ord("a"), ord("z") + 1))]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(16)
    writer.add_head_count_kv(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    shapes = {"token_embd.weight": (len(tokens), n_embd), "output_norm.weight": (n_embd,)}
    shapes["output.weight"] = (len(tokens), n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = shapes[p + "ffn_norm.weight"] = (n_embd,)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[p + name + ".weight"] = (n_embd, n_embd)
        shapes[p + "ffn_gate.weight"] = shapes[p + "ffn_up.weight"] = (n_ff, n_embd)
        shapes[p + "ffn_down.weight"] = (n_embd, n_ff)
    total = 0
    for name, shape in shapes.items():
        dtype = np.float32 if len(shape) == 1 else np.float16
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
        total += -(-nbytes // 32) * 32
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with open(path, "r+b") as fh:
        start = fh.seek(0, 2)
        fh.truncate(start + -start % 32 + total)
    return path


def test_auto_layers_fit_a_model_bigger_than_the_device(tmp_path: Path, bare_pyz: Path) -> None:
    big = write_big_gguf(tmp_path / "big.gguf")
    assert big.stat().st_size > 2.5 * 2**30  # lavapipe reports 2 GiB
    result = run_pyz(bare_pyz, "-m", str(big), "-p", "the", "-n", "1", "-c", "256")
    assert result.returncode == 0, result.stderr
    said = [line for line in lines(result) if line.startswith("offloaded")]
    assert said, result.stderr
    layers, units = said[0].split()[1].split("/")
    assert units == "29" and 0 < int(layers) < 29, said


def test_fallbacks_say_why_in_one_line(tiny_pyz: Path) -> None:
    no_icd = run_pyz(tiny_pyz, *PROMPT, env=dict(os.environ, VK_ICD_FILENAMES="/nonexistent.json"))
    assert no_icd.returncode == 0 and NO_GPU in lines(no_icd), no_icd.stderr
    bad_index = run_pyz(tiny_pyz, *PROMPT, env=dict(os.environ, GGML_VK_VISIBLE_DEVICES="7"))
    invalid = NO_GPU.replace(
        "no device", "no device: ggml_vulkan: Invalid device index 7 in GGML_VK_VISIBLE_DEVICES."
    )
    assert bad_index.returncode == 0 and lines(bad_index) == [invalid], bad_index.stderr
    asked = run_pyz(
        tiny_pyz, *PROMPT, "--gpu", "vulkan", env=dict(os.environ, GGML_VK_VISIBLE_DEVICES="7")
    )
    assert_clean_error(
        asked,
        1,
        "Error: --gpu vulkan: no usable Vulkan device (no device: ggml_vulkan: Invalid device",
    )
    ngl = run_pyz(
        tiny_pyz, *PROMPT, "-ngl", "99", env=dict(os.environ, VK_ICD_FILENAMES="/nonexistent.json")
    )
    assert f"warning: -ngl 99 asks for a GPU, but {NO_GPU}" in lines(ngl)
    off = run_pyz(tiny_pyz, *PROMPT, "--gpu", "disable")
    assert off.returncode == 0 and "GPU off (--gpu none): running on the CPU" in lines(off)
    cuda = run_pyz(tiny_pyz, *PROMPT, "--gpu", "cuda")
    assert_clean_error(cuda, 1, "Error: --gpu cuda: no usable CUDA device (not in this file)")


def test_no_vulkan_loader(tiny_pyz: Path) -> None:
    """libvulkan.so.1 hidden (a private mount namespace binds /dev/null over it)."""
    found = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    loaders = sorted(
        {line.split("=> ")[-1] for line in found.splitlines() if "libvulkan.so.1 " in line}
    )
    assert loaders, "no libvulkan.so.1 on this machine"
    binds = " && ".join(f"mount --bind /dev/null {p}" for p in loaders)
    args = " ".join(f"'{a}'" for a in PROMPT)
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{binds} && exec {tiny_pyz} {args}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "unshare failed" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"cannot hide libvulkan.so.1 here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert (
        "no GPU found (Vulkan: no Vulkan loader (libvulkan.so.1; Debian/Ubuntu: libvulkan1); "
        "CUDA: not in this file): running on the CPU" in lines(result)
    )


def test_a_file_built_without_gpu(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> None:
    pyz = build_session_pyz(tmp_path_factory, session_cache, str(tiny_gguf), "--gpu", "none")
    shown = pack("inspect", str(pyz))
    assert "gpu backends:   none" in shown.stdout
    result = run_pyz(pyz, *PROMPT)
    assert result.returncode == 0
    assert (
        "no GPU found (Vulkan: not in this file; CUDA: not in this file): running on the CPU"
        in lines(result)
    )


def _complete(url: str, prompt: str, tokens: int = 4) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=60) as listing:
        model = json.loads(listing.read())["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0})
    request = urllib.request.Request(
        url + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as reply:
        return str(json.loads(reply.read())["choices"][0]["text"])


def test_the_server_batches_two_requests_on_the_gpu(smollm2_pyz: Path) -> None:
    import threading

    from tests.test_server import Server

    srv = Server(smollm2_pyz, "-ngl", "99", "-c", "512", "--parallel", "2")
    try:
        assert "offloaded 31/31 layers to Vulkan0" in srv.banner
        prompts = ["The capital of France is", "The capital of Germany is"]
        answers: dict[int, str] = {}
        errors: list[BaseException] = []

        def ask(i: int) -> None:
            try:
                answers[i] = _complete(srv.url, prompts[i])
            except BaseException as exc:  # handed to the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert not errors, errors
        assert answers[0].startswith(" Paris"), answers
        assert "Berlin" in answers[1], answers
    finally:
        srv.stop()


def test_four_requests_after_a_shared_prefix_on_the_gpu(smollm2_pyz: Path) -> None:
    """The pattern that crashed ggml-vulkan's flash attention (SIGSEGV in lavapipe's thread,
    llama-server too, 7 times in 8): one request, then four at once, one of them reusing its
    prefix. Flash attention is off on Vulkan unless -fa on asks for it."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_server import Server

    srv = Server(smollm2_pyz, "-ngl", "99", "--parallel", "4")
    try:
        assert _complete(srv.url, "Once upon a time", 8)
        prompts = ["Once upon a time 1"] + [f"Write me a poem {i}" for i in (2, 3, 4)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: _complete(srv.url, p, 8), prompts))
        assert all(answers), answers
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_rpc_workers_and_the_local_gpu_share_the_model(tiny_pyz: Path, tmp_path: Path) -> None:
    from tests.test_rpc import Worker, free_port

    worker = Worker(free_port(), tmp_path / "worker.log")
    try:
        worker.wait_ready()
        both = run_pyz(tiny_pyz, *PROMPT, "--rpc", worker.endpoint, "--verbose")
        assert both.returncode == 0, both.stderr
        assert "splitting the model over 1 RPC worker and Vulkan0 (llvmpipe" in both.stderr
        # llama.cpp names each buffer by its device: the layers went to both.
        assert f"RPC0[{worker.endpoint}] model buffer size" in both.stderr, both.stderr
        assert "Vulkan0 model buffer size" in both.stderr, both.stderr
        alone = run_pyz(tiny_pyz, *PROMPT, "--rpc", worker.endpoint, "--gpu", "none", "--verbose")
        assert alone.returncode == 0, alone.stderr
        assert "splitting the model over 1 RPC worker (no local GPU: --gpu none)" in alone.stderr
        assert "Vulkan0 model buffer size" not in alone.stderr
        assert both.stdout.strip() and alone.stdout.strip()
        with_split = run_pyz(tiny_pyz, *PROMPT, "--rpc", worker.endpoint, "--tensor-split", "1")
        assert_clean_error(with_split, 1, "the split has 1 weights for 2 devices")
    finally:
        worker.stop()


CUDA = gpu_build_dir() / "cuda"


@pytest.mark.skipif(
    not (CUDA / "libggml-cuda.so").is_file(),
    reason=f"the CUDA backend is not built here ({CUDA}: scripts/build-cuda.sh ARCHS)",
)
def test_cuda_without_a_driver_falls_back(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> None:
    """A file with CUDA inside, on a machine without an NVIDIA driver: the backend itself
    loads (ggml reports no device, nothing aborts), and the run goes on without it."""
    code = (
        "import sys; from pathlib import Path\n"
        "from runtime.engine.devices import registry\n"
        "import ctypes\n"
        f"for lib in {['libcudart.so.13', 'libcublasLt.so.13', 'libcublas.so.13']!r}:\n"
        f"    ctypes.CDLL(str(Path({str(CUDA)!r}) / lib), mode=ctypes.RTLD_GLOBAL)\n"
        f"reg = registry.load_backend(Path({str(CUDA)!r}) / 'libggml-cuda.so')\n"
        "print(len(registry.of_backend(reg)) if reg else 'not loaded')\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split()[-1] in ("0", "not loaded"), loaded.stdout
    pyz = build_session_pyz(tmp_path_factory, session_cache, str(tiny_gguf), "--gpu", "cuda")
    assert "gpu backends:   Vulkan, CUDA" in pack("inspect", str(pyz)).stdout
    on_vulkan = run_pyz(pyz, *PROMPT)  # lavapipe is visible: the run falls back to Vulkan
    assert on_vulkan.returncode == 0, on_vulkan.stderr
    assert lines(on_vulkan)[-1].startswith("offloaded 3/3 layers to Vulkan0"), on_vulkan.stderr
    no_icd = dict(os.environ, VK_ICD_FILENAMES="/nonexistent.json")
    on_cpu = run_pyz(pyz, *PROMPT, env=no_icd)  # and with no Vulkan device either, to the CPU
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert lines(on_cpu) == [
        "no GPU found (Vulkan: no device; CUDA: no NVIDIA driver (libcuda.so.1)): running on the CPU"
    ], on_cpu.stderr
    asked = run_pyz(pyz, *PROMPT, "--gpu", "cuda")
    assert_clean_error(asked, 1, "Error: --gpu cuda: no usable CUDA device (no NVIDIA driver")
