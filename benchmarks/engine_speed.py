"""Run as a script: time llamapyz's own engine on prompt processing or generation, as
llama-bench times llama.cpp (its pp and tg tests), and print the samples as JSON.

    engine_speed.py MODEL VARIANT THREADS pp|tg N REPS [PROMPT] [GPU]

GPU (optional) is BACKEND:DEVICE:LAYERS, e.g. vulkan:Vulkan0:31: the layers go to that one
device as `./model.pyz --gpu BACKEND --device DEVICE -ngl LAYERS` puts them (the device's
self-test first, runtime.engine.devices.gpu's plan); the result says where they went.

MODEL is the .pyz (its embedded weights, loaded through the FILE* path) or a GGUF. The start
is cli.main()'s: engine.set_verbose(False), the CPU variant (the one llamapyz chose, passed
in so that both sides run the same kernels), engine.start_backend, engine.Model with the
runtime's own defaults for the context and batch. Like llama-bench, one untimed warm-up run
comes first, and the sample reported per repetition is tokens / seconds.

pp: `Model.generate(tokens, 0, greedy)`: with nothing to predict it is exactly the prompt
    step of every request: the sampler chain is made, the context's memory is cleared (the
    previous prompt shares no prefix: two prompts are alternated whose first tokens differ),
    the N tokens are decoded in one batch, the sampler is freed. The tokens are random ids,
    as in llama-bench's pp, which times the decode of N random tokens after a memory clear.
tg: `Model.generate(PROMPT, N, greedy)` (PROMPT: one SmolLM2 continues past N tokens at
    temperature 0 unless given; the model must not stop early): the window runs from the first token handed out to
    the end of the loop, so each token in it costs one sample, one detokenization and one
    llama_decode of one token, all through ctypes; the rate is the tokens made in that
    window over its length. The prompt's own decode stays outside, as llama-bench's tg has
    no prompt (it decodes N random tokens one by one, without sampling). The rate over the
    whole call (the short prompt included) is reported too.
"""

from __future__ import annotations

import json
import random
import sys
import time

# Plain English that SmolLM2 continues for well over 128 tokens at temperature 0.
GEN_PROMPT = (
    "Chapter 1\n\nThe old lighthouse keeper had lived on the island for forty years. Every "
    "evening he climbed the spiral stairs, lit the great lamp and watched the ships pass. "
    "One stormy night in November,"
)
SEED = 1234


def _random_prompts(n_vocab: int, n: int) -> tuple[list[int], list[int]]:
    """Two n-token prompts of random ids whose first tokens differ (so neither reuses the
    other's cached prefix), as llama-bench makes its pp prompts."""
    rng = random.Random(SEED)
    a = [rng.randrange(n_vocab) for _ in range(n)]
    b = [rng.randrange(n_vocab) for _ in range(n)]
    if b[0] == a[0]:
        b[0] = (a[0] + 1) % n_vocab
    return a, b


def _gpu_offload(spec: str, cpu_path: object, source: object, result: dict[str, object]) -> object:
    """The offload of `spec` (BACKEND:DEVICE:LAYERS) as the runtime plans it; records it."""
    from runtime.engine import settings
    from runtime.engine.devices import gpu, gpu_selftest

    backend, device, layers = spec.split(":")
    plan = gpu.plan(
        backend,
        device,
        None,
        "none",
        None,
        int(layers),
        source,  # type: ignore[arg-type]
        settings.CTX_SIZE,
        settings.N_BATCH,
        gpu_selftest.verdicts(cpu_path),  # type: ignore[arg-type]
    )
    if not plan.devices:
        raise SystemExit(f"--gpu {backend} --device {device}: {plan.line}")
    result.update(gpu=spec, gpu_line=gpu.offloaded_line(plan), gpu_layers=plan.layers)
    result["flash_attn"] = gpu.flash_attn(
        "auto", [d.backend for d in plan.devices]
    )  # as a run of the .pyz makes it
    return plan.offload


def main(argv: list[str]) -> None:
    spec, variant, threads, mode, n, reps = (
        argv[0],
        argv[1],
        int(argv[2]),
        argv[3],
        int(argv[4]),
        int(argv[5]),
    )
    gen_prompt = argv[6] if len(argv) > 6 and argv[6] else GEN_PROMPT
    gpu_spec = argv[7] if len(argv) > 7 else ""
    from runtime.engine import settings
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.sources import resolve as weights

    engine.set_verbose(False)
    choice = cpu.choose(variant or None)
    engine.start_backend(choice.path)
    source = weights.resolve(spec, None)
    greedy = engine.Sampling(temp=0.0)
    result: dict[str, object] = {"variant": choice.variant, "threads": threads, "mode": mode}
    offload = _gpu_offload(gpu_spec, choice.path, source, result) if gpu_spec else None
    with engine.Model(
        source,
        n_ctx=settings.CTX_SIZE,
        n_batch=settings.N_BATCH,
        n_threads=threads,
        offload=offload,
        flash_attn=str(result.get("flash_attn", "auto")),
    ) as model:
        if mode == "pp":
            a, b = _random_prompts(model.n_vocab, n)
            for _ in model.generate(b, 0, greedy):  # warm-up
                pass
            samples = []
            for rep in range(reps):
                prompt = a if rep % 2 == 0 else b
                start = time.perf_counter()
                for _ in model.generate(prompt, 0, greedy):
                    pass
                samples.append(n / (time.perf_counter() - start))
            result["samples_ts"] = samples
        elif mode == "tg":
            prompt = model.tokenize(gen_prompt)
            for _ in model.generate(prompt, 1, greedy):  # warm-up
                pass
            samples, whole, produced = [], [], []
            text = ""
            for _ in range(reps):
                pieces = []
                start = time.perf_counter()
                first_at = 0.0
                first_count = 0
                for piece in model.generate(prompt, n, greedy):
                    if not first_at:
                        first_at = time.perf_counter()
                        first_count = model.produced
                    pieces.append(piece)
                end = time.perf_counter()
                produced.append(model.produced)
                if model.produced != n:
                    raise SystemExit(
                        f"the model stopped after {model.produced} of {n} tokens "
                        f"({model.finish_reason}): choose another prompt"
                    )
                samples.append((model.produced - first_count) / (end - first_at))
                whole.append(model.produced / (end - start))
                text = "".join(pieces)
            result.update(
                samples_ts=samples, whole_call_ts=whole, produced=produced, text=text[:200]
            )
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    samples_ts: list[float] = result["samples_ts"]  # type: ignore[assignment]
    result["avg_ts"] = sum(samples_ts) / len(samples_ts)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
