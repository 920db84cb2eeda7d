"""llama.cpp through its bindings, in rooms by job: `decoding` (the model, its drafters),
`devices` (CPU variants, GPU backends, offload) and `media` (images); the native side
(`backend`) and the run-time defaults (`settings`) at its top. Imports `runtime.sources` and
`runtime.file`; inside, `media` imports `devices`, `devices` imports `decoding`, each may import
the top, and the top imports none of them."""
