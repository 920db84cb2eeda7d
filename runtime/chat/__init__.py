"""Chat templates, the terminal conversation, stop strings. Imports `runtime.engine`,
`runtime.sources` and `runtime.file`."""
