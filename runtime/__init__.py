"""What runs inside a llamapyz .pyz: the CLI, the engine over llama.cpp, the file layout."""

__version__ = "0.1.0"
