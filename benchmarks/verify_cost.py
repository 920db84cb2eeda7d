"""T(k)/T(1) as a verify step pays it: one batch of k tokens with logits on every position
(llama-bench's pp computes them for the last only; on SmolLM2 the output layer is a fifth of a
token's work), decoded by llamapyz's engine after a 100-token prompt, medians of rounds that
visit every k in turn. Run by the speculation rows in a process of its own:

    python -m benchmarks.verify_cost MODEL THREADS 1,2,4,8   (prints {"1": 1.0, "2": ...})
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROUNDS = 15


def main(model: Path, threads: int, sizes: list[int]) -> dict[int, float]:
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.sources.source import ModelSource

    engine.set_verbose(False)
    engine.start_backend(cpu.choose().path)
    source = ModelSource(model, 0, model.stat().st_size, model.stem)
    with engine.Model(source, n_ctx=1024, n_threads=threads) as llm:
        C, ctx = llm._C, llm._ctx
        memory = C.llama_get_memory(ctx)
        prompt = llm.tokenize("The quick brown fox jumps over the lazy dog. " * 12)[:100]
        llm._prefill(prompt)
        batch = C.llama_batch_init(max(sizes), 0, 1)
        seconds: dict[int, list[float]] = {k: [] for k in sizes}
        try:
            for _ in range(ROUNDS):
                for k in sizes:
                    for i in range(k):
                        batch.token[i] = prompt[i]
                        batch.pos[i] = len(prompt) + i
                        batch.n_seq_id[i] = 1
                        batch.seq_id[i][0] = 0
                        batch.logits[i] = 1
                    batch.n_tokens = k
                    started = time.perf_counter()
                    if C.llama_decode(ctx, batch) != 0:
                        raise SystemExit("verify_cost: llama_decode failed")
                    seconds[k].append(time.perf_counter() - started)
                    C.llama_memory_seq_rm(memory, 0, len(prompt), -1)
        finally:
            C.llama_batch_free(batch)
    one = statistics.median(seconds[1])
    return {k: statistics.median(seconds[k]) / one for k in sizes}


if __name__ == "__main__":
    curve = main(Path(sys.argv[1]), int(sys.argv[2]), [int(k) for k in sys.argv[3].split(",")])
    print(json.dumps(curve))
