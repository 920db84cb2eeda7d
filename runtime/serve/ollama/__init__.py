"""Ollama's dialect: the /api/* routes, their request models, the model facts Ollama reports, the
NDJSON replies. Imports the shared parts of `runtime.serve` and the rooms below it; never
`runtime.serve.openai`."""
