"""The OpenAI dialect: the /v1 routes, /v1/responses, their request models. Imports the shared
parts of `runtime.serve` and the rooms below it; never `runtime.serve.ollama`."""
