"""What runs inside a llamapyz .pyz: the front door (`cli`, `options`, `modes`) at the top, one
package per job beneath it (file, sources, engine, chat, serve, rpc)."""

__version__ = "0.1.0"
