"""Run as a script: generation speed of llamapyz's engine with the model split over RPC
workers (or local, with no workers), printed as JSON samples in tokens per second.

    rpc_speed.py MODEL THREADS N REPS ENDPOINTS|- [PROMPT]

The window is the one engine_speed.py's tg uses: from the first token handed out to the
end of the loop, so the prompt's own decode stays outside. One untimed run comes first.
"""

from __future__ import annotations

import json
import sys
import time

from engine_speed import GEN_PROMPT  # type: ignore[import-not-found]


def main(argv: list[str]) -> None:
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.rpc import client as rpc
    from runtime.rpc.endpoints import parse_endpoints
    from runtime.sources.resolve import from_path

    model, threads, n, reps = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    endpoints = argv[4] if len(argv) > 4 and argv[4] != "-" else ""
    text = argv[5] if len(argv) > 5 and argv[5] else GEN_PROMPT
    engine.set_verbose(False)
    engine.start_backend(cpu.choose().path)
    source = from_path(model)
    offload = None
    if endpoints:
        devices = rpc.add_servers(parse_endpoints(endpoints))
        offload = rpc.plan_offload(devices, n_layer=rpc.layer_count(source.path, source.offset))
    llm = engine.Model(source, n_ctx=4096, n_threads=threads, offload=offload)
    prompt = llm.tokenize(text)
    samples = []
    for _ in range(reps + 1):
        llm._cached = []  # each run reads the prompt again, as the first did
        start = None
        for _piece in llm.generate(prompt, n, engine.Sampling(temp=0.0)):
            if start is None:
                start = time.perf_counter()
        assert start is not None
        samples.append((llm.produced - 1) / (time.perf_counter() - start))
    print(json.dumps({"samples": samples[1:], "tokens": llm.produced}))


if __name__ == "__main__":
    main(sys.argv[1:])
