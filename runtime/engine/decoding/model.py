"""Model load (FILE* included) and generation over llama.cpp's bindings.

With `runtime.engine.backend`, the only modules that touch llama_cpp. Sampling happens in
llama.cpp's own sampler chain, in the same order llama-cpp-python builds it, so that the
same seed and settings give the same tokens; no logits are copied into Python.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

# The engine's interface; the native side lives in runtime.engine.backend.
from runtime.engine.backend import (
    EngineError,
    _c,
    _stderr_captured,
    bindings,
    forget_log,
    ggml_library,
    last_log_error,
    lib_dir,
    set_verbose,
    start_backend,
)
from runtime.sources.source import ModelSource

__all__ = [
    "EngineError",
    "Model",
    "Sampling",
    "bindings",
    "ggml_library",
    "last_log_error",
    "lib_dir",
    "set_verbose",
    "start_backend",
]
LAST_N_PENALTY = 64  # llama-cpp-python's last_n_tokens_size


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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token, added to its logit)


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
        flash_attn: str = "auto",
    ) -> None:
        C = bindings()
        self._C = C
        self._file: Optional[int] = None
        self._model: Any = None
        self._ctx: Any = None
        self._embed_ctx: Any = None
        self.draft: Any = None  # draft.DraftModel that drafts for this model, closed with it
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
        forget_log()
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
        # auto is llama.cpp's own default (on for the CPU): faster prompts, and with several
        # requests sharing the memory it skips the cells another request holds.
        cparams.flash_attn_type = {
            "auto": C.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[flash_attn]
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
        self.produced = 0  # tokens the last generate() made
        self.finish_reason = "stop"  # why it ended: "stop" (end of text) or "length"
        self._n_threads = n_threads
        self.speculation: Any = None  # speculate.Speculation: generate() drafts with it
        self.gpu_devices: list[Any] = []  # where its layers went: the vision projector goes too

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
                self.n_vocab,
                LAST_N_PENALTY,
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            ),
        )
        if s.logit_bias:
            biases = (C.llama_logit_bias * len(s.logit_bias))(
                *[C.llama_logit_bias(token, bias) for token, bias in s.logit_bias]
            )
            add(chain, C.llama_sampler_init_logit_bias(self.n_vocab, len(s.logit_bias), biases))
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

    def logits_after(self, tokens: list[int]) -> list[list[float]]:
        """The next-token logits after each prefix of `tokens` (to compare backends)."""
        C = self._C
        C.llama_memory_clear(C.llama_get_memory(self._ctx), True)
        self._cached = []
        rows = []
        arr = (C.llama_token * 1)()
        for token in tokens:
            arr[0] = token
            if C.llama_decode(self._ctx, C.llama_batch_get_one(arr, 1)) != 0:
                raise EngineError("llama.cpp failed to decode")
            ptr = C.llama_get_logits_ith(self._ctx, -1)
            rows.append([float(ptr[i]) for i in range(self.n_vocab)])
        C.llama_memory_clear(C.llama_get_memory(self._ctx), True)
        return rows

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
        prefill = getattr(prompt, "prefill", None)  # engine.media.vision.Prompt: text and images
        if self.speculation is not None and prefill is None:
            from runtime.engine.decoding import speculate

            yield from speculate.generate(self, prompt, n_predict, sampling, self.speculation)
            return
        sampler = self._sampler(sampling)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.produced = 0
        self.finish_reason = "length"
        try:
            prefill(self) if prefill else self._prefill(prompt)
            token_arr = (C.llama_token * 1)()
            while n_predict < 0 or self.produced < n_predict:
                if len(self._cached) >= self.n_ctx:
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
        if self.draft is not None:
            self.draft.close()
            self.draft = None
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
