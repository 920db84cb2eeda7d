"""One request's work as the generation service and its scheduler both see it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from runtime.engine.decoding.model import Sampling


def sampling_asked(defaults: Sampling, **given: Any) -> Sampling:
    """The server's sampling with each value a request gave (None: it gave none)."""
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


@dataclass
class Job:
    """One request's work: a prompt to complete, or a text to embed."""

    prompt: list[int]
    n_predict: int
    sampling: Any
    stops: tuple[str, ...] = ()
    embed_text: Optional[str] = None
    on_event: Callable[[str, Any], None] = lambda kind, value: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Without streaming, the text waits here for "done": no wake-up of the HTTP thread per
    # token, which on a small machine takes a core from llama.cpp's threads.
    stream: bool = True
    parts: list[str] = field(default_factory=list)
    # When the request came in and when its first text came out (perf_counter), for the
    # Ollama dialect's prompt_eval_duration and eval_duration.
    arrived: float = field(default_factory=time.perf_counter)
    first_text: Optional[float] = None
    # Asked-for log-probabilities: None costs nothing; N also gives the N likeliest tokens.
    logprobs: Optional[int] = None
    # (token, its log-probability, [(token, log-probability)] of the likeliest), appended by
    # the engine's thread and read by the HTTP one (list appends are atomic).
    token_logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)

    def emit(self, text: str) -> None:
        if self.first_text is None:
            self.first_text = time.perf_counter()
        if self.stream:
            self.on_event("text", text)
        else:
            self.parts.append(text)

    def cancel(self) -> None:
        self.cancelled.set()
