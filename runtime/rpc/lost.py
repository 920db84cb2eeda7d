"""A lost RPC worker: ggml-rpc aborts when a worker stops or the network fails; this turns
that abort into one line naming the worker."""

from __future__ import annotations

import ctypes
import os
import socket
import time
from typing import Any, Optional

from runtime.rpc.endpoints import format_endpoint

ADDED: dict[tuple[str, int], list[int]] = {}  # endpoint -> its devices, filled by the client
_abort_callback: Any = None
_previous_abort: Any = None
_ABORT = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


def _lost_workers(timeout: float = 0.5, tries: int = 5) -> list[str]:
    """The added workers that no longer accept a connection (a stopped worker refuses it).

    Asked a few times: a worker that is being killed drops our connection a moment before
    the kernel closes its listening socket.
    """
    for attempt in range(tries):
        lost = []
        for host, port in ADDED:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    pass
            except OSError:
                lost.append(format_endpoint(host, port))
        if lost or attempt == tries - 1:
            return lost
        time.sleep(0.2)
    return []


def abort_message(message: str) -> Optional[str]:
    """The line to print for a ggml abort message that comes from ggml-rpc, else None."""
    where, _, what = message.partition(": ")
    if "ggml-rpc" not in os.path.basename(where):
        return None
    what = what.strip()
    if what.startswith("Failed to connect to "):
        return f"Error: cannot reach the RPC worker {what[len('Failed to connect to ') :]}"
    if what.startswith("RPC handshake failed for "):
        endpoint = what[len("RPC handshake failed for ") :]
        return (
            f"Error: the RPC worker {endpoint} speaks another version of llama.cpp's RPC protocol"
        )
    if "crashed or returned malformed response" in what:
        lost = _lost_workers()
        if not lost:
            lost = [format_endpoint(*endpoint) for endpoint in ADDED]
            return (
                "Error: lost the connection to an RPC worker ("
                + " or ".join(lost)
                + "); the model cannot run without it"
            )
        noun = "worker" if len(lost) == 1 else "workers"
        return (
            f"Error: lost the connection to the RPC {noun} {', '.join(lost)} "
            "(it stopped, or the network failed); the model cannot run without it"
        )
    return f"Error: llama.cpp's RPC backend stopped ({what})"


def install_abort_message(ggml: Any) -> None:
    """Put our line for ggml-rpc's aborts in front of the abort callback already installed.

    ggml-rpc has no error path: a worker that stops or a network that fails ends in
    GGML_ABORT, on the dispatcher thread or the caller's. The engine's callback would call
    that "a failed check ... the model file may be damaged"; this one says which worker was
    lost, then ends the process with exit code 1, as the engine's does. Other aborts go on to
    the callback installed before (the engine's), so call this after `engine.set_verbose`.
    """
    global _abort_callback, _previous_abort
    if _abort_callback is not None:
        return

    def on_abort(raw: bytes) -> None:
        message = raw.decode("utf-8", "replace") if raw else ""
        line = abort_message(message)
        if line is None and _previous_abort is not None:
            _previous_abort(raw)
            line = f"Error: llama.cpp stopped ({message})"  # the previous one did not exit
        from runtime.engine import backend

        text = line or f"Error: llama.cpp stopped ({message})"
        backend.fatal(text[len("Error: ") :] if text.startswith("Error: ") else text)

    _abort_callback = _ABORT(on_abort)
    previous = ggml.ggml_set_abort_callback(ctypes.cast(_abort_callback, ctypes.c_void_p))
    _previous_abort = _ABORT(previous) if previous else None
