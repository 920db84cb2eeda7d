"""The HTTP server: the app and its routes, the generation service and its batch scheduler, the
reply builders, the request models, the chat page. Imports `runtime.chat`, `runtime.engine`,
`runtime.sources` and `runtime.file`."""
