"""What `-m` names: a GGUF, another .pyz, a llamafile member, the Ollama store and its Modelfile
parameters, `.args`; the `ModelSource` they all resolve to. Imports `runtime.file` only."""
