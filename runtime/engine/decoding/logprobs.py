"""Log-probabilities of the model's next-token distribution, read from llama.cpp's logits.

Only a request that asks for them pays: one log-softmax over the vocabulary per token.
"""

from __future__ import annotations

from typing import Any

MAX_TOP = 20  # OpenAI's limit on top_logprobs


def at(model: Any, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of `token` at batch row `index`, and the `top` likeliest tokens."""
    # Plain Python: the .pyz carries no numpy, and a vocabulary of 150k takes a few ms.
    import heapq
    import math

    ptr = model._C.llama_get_logits_ith(model._ctx, index)
    logits = ptr[: model.n_vocab]
    peak = max(logits)
    log_total = peak + math.log(math.fsum(math.exp(x - peak) for x in logits))
    chosen = logits[token] - log_total
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = heapq.nlargest(top, range(len(logits)), key=logits.__getitem__)
        best = [(i, logits[i] - log_total) for i in ids]
    return chosen, best
