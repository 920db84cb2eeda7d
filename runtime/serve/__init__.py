"""The HTTP server: the app, the generation service and its batch scheduler, jobs, the reply
builders, the chat page; each API dialect in a package of its own (`openai`, `ollama`), which
never import each other. Imports `runtime.chat`, `runtime.engine`, `runtime.sources` and
`runtime.file`."""
