"""The parts of llama-cpp-python the engine leans on: fail here, loudly, if they drift."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from packager import elf
from runtime.engine.decoding import model as engine

# name -> number of arguments, as the engine calls them
USED = {
    "llama_model_load_from_file_ptr": 2,
    "llama_model_load_from_file": 2,
    "llama_init_from_model": 2,
    "llama_batch_get_one": 2,
    "llama_decode": 2,
    "llama_tokenize": 7,
    "llama_token_to_piece": 6,
    "llama_sampler_init_penalties": 5,
    "llama_sampler_init_top_k": 1,
    "llama_sampler_init_typical": 2,
    "llama_sampler_init_top_p": 2,
    "llama_sampler_init_min_p": 2,
    "llama_sampler_init_temp": 1,
    "llama_sampler_init_dist": 1,
    "llama_sampler_init_greedy": 0,
    "llama_sampler_sample": 3,
    "llama_memory_clear": 2,
    "llama_vocab_is_eog": 2,
    "llama_model_meta_val_str": 4,
}


def test_bindings_have_the_functions_and_arities_we_call() -> None:
    C = engine.bindings()
    for name, arity in USED.items():
        fn = getattr(C, name)
        assert len(fn.argtypes) == arity, name
    params = C.llama_model_default_params()
    assert hasattr(params, "load_mode") and hasattr(params, "n_gpu_layers")
    ctx = C.llama_context_default_params()
    for field in ("n_ctx", "n_batch", "n_ubatch", "n_threads", "flash_attn_type", "no_perf"):
        assert hasattr(ctx, field), field


def test_bindings_load_without_numpy() -> None:
    # The .pyz carries no numpy: importing the bindings must not run llama_cpp/__init__.py.
    code = (
        "import sys; from runtime.engine.decoding import model as engine; engine.bindings(); "
        "print('numpy' in sys.modules, 'llama_cpp.llama' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_engine_needs_no_openmp_runtime(tiny_pyz: Path, tmp_path: Path) -> None:
    """Built with ggml's own thread pool (GGML_OPENMP=OFF): no libgomp travels or is needed."""
    with zipfile.ZipFile(tiny_pyz) as zf:
        natives = [n for n in zf.namelist() if n.startswith("native/") and ".so" in n]
        assert natives and not [n for n in natives if "omp.so" in n]
        for name in natives:
            lib = tmp_path / "lib.so"
            lib.write_bytes(zf.read(name))
            assert not [v for v in elf.needed_versions(lib) if "OMP_" in v], name
