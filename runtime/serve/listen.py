"""The server's listening socket, taken before the model loads so that a busy port fails fast.

Kept apart from `runtime.serve.app` so that the command line can name its error without
importing FastAPI on every start.
"""

from __future__ import annotations

import socket


class PortError(Exception):
    """The address to listen on cannot be used."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before the model loads so that a busy port fails fast."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(128)
    return sock
