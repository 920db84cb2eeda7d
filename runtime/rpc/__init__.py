"""llama.cpp's RPC backend: endpoints, the protocol check, the client side, the worker. Imports
`runtime.engine`, `runtime.sources` and `runtime.file`."""
