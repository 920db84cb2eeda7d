"""The peer for the start rows: a plain llama-cpp-python script completing one prompt.

Run as a script: peer_llama_cpp.py MODEL PROMPT N_PREDICT THREADS [VARIANT]. It loads the same
CPU variant llamapyz chose (the build uses GGML_BACKEND_DL, so no backend exists until one
is loaded) and streams the completion to stdout, as the .pyz does.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path


def load_variant(package: Path, variant: str) -> None:
    """Register libggml-cpu-VARIANT.so with the libggml that libllama links to."""
    lib = ctypes.CDLL(str(package / "lib" / "libggml.so.0"))
    lib.ggml_backend_load.restype = ctypes.c_void_p
    lib.ggml_backend_load.argtypes = [ctypes.c_char_p]
    path = package.parent / "bin" / f"libggml-cpu-{variant}.so"
    if not lib.ggml_backend_load(str(path).encode()):
        sys.exit(f"cannot load {path}")


def main(argv: list[str]) -> None:
    model, prompt, n_predict, threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    import llama_cpp

    if len(argv) > 4 and argv[4]:
        load_variant(Path(llama_cpp.__file__).parent, argv[4])
    # n_threads_batch too: llamapyz uses its thread count for the prompt as well.
    llm = llama_cpp.Llama(
        model, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    out = sys.stdout
    for chunk in llm.create_completion(prompt, max_tokens=n_predict, temperature=0, stream=True):
        out.write(chunk["choices"][0]["text"])  # type: ignore[index]
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
