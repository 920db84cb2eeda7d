"""Where the model runs: the CPU variants (scored, self-tested in a child or a fork) and what the
CPU is, the GPU backends and their devices (ggml's registry), their self-test, the layers that
are offloaded. Imports `decoding` (a self-test runs the model), engine's top,
`runtime.sources` and `runtime.file`; never `media`."""
