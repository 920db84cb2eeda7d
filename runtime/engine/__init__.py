"""llama.cpp through its bindings: the native side, model load and generation, CPU variants and
their self-test, grammar, run-time defaults. Imports `runtime.sources` and `runtime.file`."""
