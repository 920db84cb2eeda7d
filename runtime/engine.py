"""The only module that imports llama_cpp: backend start, model load (FILE* included), generation.

We use llama-cpp-python's ctypes bindings (`llama_cpp.llama_cpp`) and none of its high-level
classes: `llama_cpp/__init__.py` imports numpy, which the .pyz does not carry, and the
high-level generate loop copies logits through numpy for every token. Sampling happens in
llama.cpp's own sampler chain, in the same order llama-cpp-python builds it, so that the
same seed and settings give the same tokens. `tests/test_engine_bindings.py` fails if the
bindings we lean on drift.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from runtime.weights import ModelSource

LAST_N_PENALTY = 64  # llama-cpp-python's last_n_tokens_size


class EngineError(Exception):
    """The engine could not load or run a model."""


@dataclass(frozen=True)
class Sampling:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    seed: int = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
    grammar: Optional[str] = None  # GBNF; the output must match it


_log_lines: deque[str] = deque(maxlen=40)
_log_verbose = False
_log_callback: Any = None  # keeps the ctypes callback alive for as long as llama.cpp holds it
_abort_callback: Any = None


def bindings() -> Any:
    """`llama_cpp.llama_cpp` (the ctypes bindings), imported without the package's __init__."""
    module = sys.modules.get("llama_cpp.llama_cpp")
    if module is not None:
        return module
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise EngineError("llama-cpp-python is not installed")
        package = types.ModuleType("llama_cpp")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["llama_cpp"] = package
    try:
        return importlib.import_module("llama_cpp.llama_cpp")
    except (OSError, RuntimeError, FileNotFoundError) as exc:
        raise EngineError(f"cannot load llama.cpp's shared library ({exc})") from None


def lib_dir() -> Path:
    """The directory holding libllama and libggml."""
    return Path(bindings().__file__).parent / "lib"


def set_verbose(verbose: bool) -> None:
    """Route llama.cpp's and ggml's log to stderr (verbose) or to a short memory for errors."""
    global _log_verbose, _log_callback
    _log_verbose = verbose
    if _log_callback is not None:
        return
    C = bindings()

    def on_log(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", "replace") if text else ""
        _log_lines.append(line)
        if _log_verbose:
            sys.stderr.write(line)
            sys.stderr.flush()

    _log_callback = C.llama_log_callback(on_log)
    C.llama_log_set(_log_callback, ctypes.c_void_p())
    _turn_aborts_into_errors()


def _turn_aborts_into_errors() -> None:
    """A failed GGML_ASSERT (a damaged model, say) ends in one line on stderr, not a C backtrace."""
    global _abort_callback
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # std::terminate's handler would run gdb
    base = lib_dir() / "libggml-base.so.0"
    if not base.exists():
        return
    lib = ctypes.CDLL(str(base))
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    def on_abort(message: bytes) -> None:
        text = message.decode("utf-8", "replace") if message else "unknown error"
        where, _, what = text.partition(": ")
        sys.stdout.flush()
        sys.stderr.write(
            f"Error: llama.cpp stopped on a failed check ({what or text} at "
            f"{os.path.basename(where)}); the model file may be damaged or unsupported\n"
        )
        sys.stderr.flush()
        os._exit(1)

    _abort_callback = callback_type(on_abort)
    lib.ggml_set_abort_callback.restype = ctypes.c_void_p
    lib.ggml_set_abort_callback.argtypes = [callback_type]
    lib.ggml_set_abort_callback(_abort_callback)


def last_log_error() -> str:
    """The last error-looking line llama.cpp logged, for messages."""
    for line in reversed(_log_lines):
        text = line.strip()
        if text and ("error" in text.lower() or "failed" in text.lower()):
            return text
    return ""


_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fseeko.restype = ctypes.c_int
        libc.fseeko.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        libc.fclose.restype = ctypes.c_int
        libc.fclose.argtypes = [ctypes.c_void_p]
        _libc = libc
    return _libc


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], list[str]]]:
    """Catch what C code writes straight to file descriptor 2 while the block runs."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


class Model:
    """A loaded llama.cpp model, its vocabulary and one context."""

    def __init__(
        self,
        source: ModelSource,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int = 1,
        use_mmap: bool = True,
        use_mlock: bool = False,
        n_seq_max: int = 1,
        offload: Any = None,
    ) -> None:
        C = bindings()
        self._C = C
        self._file: Optional[int] = None
        self._model: Any = None
        self._ctx: Any = None
        self._embed_ctx: Any = None
        self.source = source

        params = C.llama_model_default_params()
        params.n_gpu_layers = 0
        if use_mlock:
            params.load_mode = C.LLAMA_LOAD_MODE_MMAP_MLOCK if use_mmap else C.LLAMA_LOAD_MODE_MLOCK
        else:
            params.load_mode = C.LLAMA_LOAD_MODE_MMAP if use_mmap else C.LLAMA_LOAD_MODE_NONE
        self._offload = offload  # rpc.Offload: its ctypes arrays must outlive the load
        if offload is not None:
            offload.apply(params)
        if source.offset == 0:
            self._model = C.llama_model_load_from_file(str(source.path).encode(), params)
        else:
            # Embedded weights: llama.cpp reads the GGUF from the FILE*'s position and
            # mmaps the tensors in place, so nothing is copied out of the .pyz.
            libc = _c()
            fp = libc.fopen(str(source.path).encode(), b"rb")
            if not fp:
                raise EngineError(f"cannot open {source.path}")
            self._file = fp
            if libc.fseeko(fp, source.offset, 0) != 0:
                self.close()
                raise EngineError(f"cannot seek to the weights in {source.path}")
            self._model = C.llama_model_load_from_file_ptr(ctypes.c_void_p(fp), params)
        if not self._model:
            detail = last_log_error()
            self.close()
            raise EngineError(
                f"llama.cpp could not load the model in {source.label}"
                + (f": {detail}" if detail else "")
            )
        self._vocab = C.llama_model_get_vocab(self._model)
        self.n_ctx_train = int(C.llama_model_n_ctx_train(self._model))
        self.n_vocab = int(C.llama_vocab_n_tokens(self._vocab))

        n_ctx = n_ctx if n_ctx > 0 else self.n_ctx_train
        cparams = C.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(n_batch, n_ctx)
        cparams.n_ubatch = min(n_batch, n_ctx)
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if n_seq_max > 1:  # several requests share one memory, each may use all of it
            cparams.n_seq_max = n_seq_max
            cparams.kv_unified = True
        cparams.no_perf = True
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            detail = last_log_error()
            self.close()
            raise EngineError(
                f"llama.cpp could not create a context of {n_ctx} tokens"
                + (f": {detail}" if detail else "")
            )
        self.n_ctx = int(C.llama_n_ctx(self._ctx))
        self.n_batch = int(cparams.n_batch)
        self._cached: list[int] = []  # the tokens the context's memory holds, in order
        self.stopped_by_context = False
        self.produced = 0  # tokens the last generate() made
        self.finish_reason = "stop"  # why it ended: "stop" (end of text) or "length"
        self._n_threads = n_threads

    def meta(self, key: str) -> Optional[str]:
        """A GGUF metadata value as text, or None."""
        buf = ctypes.create_string_buffer(4096)
        n = self._C.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._C.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        C = self._C
        data = text.encode("utf-8")
        cap = len(data) + 16
        tokens = (C.llama_token * cap)()
        n = C.llama_tokenize(self._vocab, data, len(data), tokens, cap, add_special, True)
        if n < 0:
            cap = -n
            tokens = (C.llama_token * cap)()
            n = C.llama_tokenize(self._vocab, data, len(data), tokens, cap, add_special, True)
        return list(tokens[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _sampler(self, s: Sampling) -> Any:
        C = self._C
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = C.llama_sampler_chain_add
        add(
            chain,
            C.llama_sampler_init_penalties(
                self.n_vocab, LAST_N_PENALTY, s.repeat_penalty, 0.0, 0.0
            ),
        )
        if s.grammar:
            with _stderr_captured() as said:  # the grammar parser prints to stderr itself
                grammar = C.llama_sampler_init_grammar(self._vocab, s.grammar.encode(), b"root")
            if not grammar:
                C.llama_sampler_free(chain)
                detail = " ".join(said()).strip() or last_log_error()
                raise EngineError(
                    "the grammar is not valid GBNF" + (f" ({detail})" if detail else "")
                )
            add(chain, grammar)
        if s.temp < 0.0:
            add(chain, C.llama_sampler_init_dist(s.seed))
        elif s.temp == 0.0:
            add(chain, C.llama_sampler_init_greedy())
        else:
            add(chain, C.llama_sampler_init_top_k(s.top_k))
            add(chain, C.llama_sampler_init_typical(s.typical_p, 1))
            add(chain, C.llama_sampler_init_top_p(s.top_p, 1))
            add(chain, C.llama_sampler_init_min_p(s.min_p, 1))
            add(chain, C.llama_sampler_init_temp(s.temp))
            add(chain, C.llama_sampler_init_dist(s.seed))
        return chain

    def _decode(self, tokens: list[int]) -> None:
        C = self._C
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            arr = (C.llama_token * len(chunk))(*chunk)
            rc = C.llama_decode(self._ctx, C.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                detail = last_log_error()
                raise EngineError(
                    f"llama.cpp failed to evaluate the prompt (code {rc}) {detail}".strip()
                )

    def token_text(self, token: int) -> str:
        """A token's vocabulary text, special tokens included (for template guessing)."""
        raw = self._C.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def special_token(self, name: str) -> str:
        """The text of the BOS or EOS token, or "" when the model has none."""
        fn = {"bos": "llama_vocab_bos", "eos": "llama_vocab_eos"}[name]
        token = int(getattr(self._C, fn)(self._vocab))
        return self.token_text(token) if token >= 0 else ""

    def _prefill(self, prompt: list[int]) -> None:
        """Decode `prompt`, reusing whatever prefix of it the context already holds."""
        C = self._C
        common = 0
        for a, b in zip(self._cached, prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # the last token must be decoded for its logits
        memory = C.llama_get_memory(self._ctx)
        if common == 0:
            C.llama_memory_clear(memory, True)
        else:
            C.llama_memory_seq_rm(memory, 0, common, -1)
        self._cached = list(prompt[:common])
        rest = prompt[common:]
        for start in range(0, len(rest), self.n_batch):
            chunk = rest[start : start + self.n_batch]
            arr = (C.llama_token * len(chunk))(*chunk)
            rc = C.llama_decode(self._ctx, C.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                self._cached = []
                detail = last_log_error()
                raise EngineError(
                    f"llama.cpp failed to evaluate the prompt (code {rc}) {detail}".strip()
                )
            self._cached += chunk

    def generate(self, prompt: list[int], n_predict: int, sampling: Sampling) -> Iterator[str]:
        """Stream the completion of `prompt` as text, piece by piece."""
        C = self._C
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.n_ctx:
            raise EngineError(
                f"the prompt is {len(prompt)} tokens, longer than the context of {self.n_ctx} (raise -c)"
            )
        sampler = self._sampler(sampling)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.produced = 0
        self.finish_reason = "length"
        try:
            self._prefill(prompt)
            token_arr = (C.llama_token * 1)()
            while n_predict < 0 or self.produced < n_predict:
                if len(self._cached) >= self.n_ctx:
                    self.stopped_by_context = True
                    break
                token = int(C.llama_sampler_sample(sampler, self._ctx, -1))
                if C.llama_vocab_is_eog(self._vocab, token):
                    self.finish_reason = "stop"
                    break
                self.produced += 1
                text = decoder.decode(self.piece(token))
                token_arr[0] = token
                rc = C.llama_decode(self._ctx, C.llama_batch_get_one(token_arr, 1))
                if rc != 0:
                    self._cached = []
                    raise EngineError(f"llama.cpp failed to decode (code {rc})")
                self._cached.append(token)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            C.llama_sampler_free(sampler)

    def embed(self, text: str) -> list[float]:
        """The mean-pooled, unit-length embedding of `text`, from a second context."""
        C = self._C
        tokens = self.tokenize(text)
        if not tokens:
            raise EngineError("the input is empty")
        if self._embed_ctx is None:
            cparams = C.llama_context_default_params()
            cparams.n_ctx = min(self.n_ctx_train or 2048, 2048)
            cparams.n_batch = cparams.n_ubatch = cparams.n_ctx
            cparams.n_threads = cparams.n_threads_batch = self._n_threads
            cparams.embeddings = True
            cparams.pooling_type = C.LLAMA_POOLING_TYPE_MEAN
            cparams.no_perf = True
            self._embed_ctx = C.llama_init_from_model(self._model, cparams)
            if not self._embed_ctx:
                raise EngineError("llama.cpp could not create an embedding context")
        limit = int(C.llama_n_ctx(self._embed_ctx))
        if len(tokens) > limit:
            raise EngineError(
                f"the input is {len(tokens)} tokens, longer than the {limit} an embedding may take"
            )
        C.llama_memory_clear(C.llama_get_memory(self._embed_ctx), True)
        arr = (C.llama_token * len(tokens))(*tokens)
        if C.llama_decode(self._embed_ctx, C.llama_batch_get_one(arr, len(tokens))) != 0:
            raise EngineError("llama.cpp failed to compute the embedding")
        n_embd = int(C.llama_model_n_embd(self._model))
        ptr = C.llama_get_embeddings_seq(self._embed_ctx, 0)
        if not ptr:
            raise EngineError("llama.cpp returned no embedding")
        values = [float(ptr[i]) for i in range(n_embd)]
        norm = sum(v * v for v in values) ** 0.5 or 1.0
        return [v / norm for v in values]

    def close(self) -> None:
        C = self._C
        if self._embed_ctx:
            C.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._ctx:
            C.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            C.llama_model_free(self._model)
            self._model = None
        if self._file:
            _c().fclose(self._file)
            self._file = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_openmp(system_name: str = "libgomp.so.1") -> str:
    """Make libgomp.so.1 (which the CPU variants need) loadable: the system's when it has one,
    else the copy in the bundle. Returns which was used."""
    try:
        ctypes.CDLL(system_name, mode=ctypes.RTLD_GLOBAL)
        return "system"
    except OSError:
        pass
    bundled = lib_dir() / "libgomp.so.1"
    if not bundled.exists():
        raise EngineError("this machine has no libgomp.so.1 (OpenMP), which llama.cpp needs")
    ctypes.CDLL(str(bundled), mode=ctypes.RTLD_GLOBAL)
    return "bundled"


def start_backend(variant_path: Optional[Path]) -> None:
    """Register the CPU backend variant with the libggml that libllama links to, then init."""
    C = bindings()
    if variant_path is not None:
        load_openmp()
        ggml = ctypes.CDLL(str(ggml_library()))
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        if not ggml.ggml_backend_load(str(variant_path).encode()):
            raise EngineError(f"cannot load the CPU backend {variant_path.name}")
    C.llama_backend_init()


def ggml_library() -> Path:
    """The libggml file that libllama resolves, under the name it resolves it by."""
    for name in ("libggml.so.0", "libggml.so"):
        path = lib_dir() / name
        if path.exists():
            return path
    raise EngineError(f"no libggml in {lib_dir()}")
