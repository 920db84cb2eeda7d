"""Images: their bytes checked before anything decodes them, libmtmd's projector and prompts of
text and image chunks, recent images' embeddings. Imports `devices` (libmtmd waits in the file
as a CPU variant does), `decoding`, engine's top, `runtime.sources` and `runtime.file`."""
