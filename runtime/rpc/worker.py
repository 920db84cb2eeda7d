"""An RPC worker: lend this machine's CPU to another llamapyz (ggml's
`ggml_backend_rpc_start_server`, from `libggml-rpc.so`).

In the order the command line calls it:

    rpc_worker.check_listen(host, port)    # fail fast: RpcError("cannot listen on ...")
    if not rpc_endpoints.is_loopback(host): warn  # rpc_endpoints.exposure_warning(host, port)
    engine.set_verbose(verbose)
    engine.start_backend(cpu.choose(...).path)
    rpc_worker.serve_worker(host, port, threads, cache_dir=None)  # blocks; Ctrl-C ends it
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from runtime.rpc import client as rpc
from runtime.rpc.endpoints import (
    RpcError,
    exposure_warning,
    format_endpoint,
    ipv4_address,
    parse_endpoints,
)

_DEVICE_CPU = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
_START_SERVER = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)


def check_listen(host: str, port: int) -> str:
    """The IPv4 address to give ggml, after proving host:port can be listened on now.

    ggml's server binds IPv4 only and takes no host name, and when it cannot listen it only
    prints "Failed to create server socket" and returns. So this binds (SO_REUSEADDR and
    listen, as ggml does) and closes a Python socket first: RpcError("cannot listen on
    HOST:PORT (Address already in use)").
    """
    endpoint = format_endpoint(host, port)
    doing = "cannot listen on"
    if not 0 < port < 65536:
        raise RpcError(f"{doing} {endpoint} (a port is a number from 1 to 65535)")
    address, _ = ipv4_address(host, port, endpoint, doing)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1)
    except OSError as exc:
        raise RpcError(f"{doing} {endpoint} ({exc.strerror or exc})") from None
    finally:
        sock.close()
    return address


def serve_worker(host: str, port: int, threads: int, cache_dir: Optional[Path] = None) -> None:
    """Serve this machine's CPU device to RPC clients on host:port until interrupted.

    Call after `engine.start_backend` (the CPU variant must be registered). Blocks in
    `ggml_backend_rpc_start_server(endpoint, cache_dir, threads, 1, [CPU device])` on a daemon
    thread, so Ctrl-C (KeyboardInterrupt) still reaches Python; the server serves one client
    at a time. ggml prints its banner and "Accepted client connection" lines with printf:
    they are sent to stderr (file descriptor 1 becomes a copy of 2), as a worker has no model
    text for stdout. `cache_dir` (default: the llamapyz cache's `rpc/`) keeps the worker's
    copies of large tensors, so a client that sends the same model again sends only hashes.
    Raises RpcError when it cannot listen or the server stops.
    """
    from runtime.file.boot import cache_dir as default_cache

    endpoint = format_endpoint(host, port)
    address = check_listen(host, port)
    cache = Path(cache_dir) if cache_dir is not None else default_cache() / "rpc"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RpcError(f"cannot use {cache} as the worker's cache ({exc.strerror})") from None
    g = rpc.ggml()
    start = rpc.proc("ggml_backend_rpc_start_server", _START_SERVER)
    cpu_device = g.ggml_backend_dev_by_type(_DEVICE_CPU)
    if not cpu_device:
        raise RpcError("the CPU backend is not started (call engine.start_backend first)")
    devices = (ctypes.c_void_p * 1)(cpu_device)
    args = (f"{address}:{port}".encode(), str(cache).encode(), max(1, threads), 1, devices)
    sys.stdout.flush()
    os.dup2(2, 1)
    thread = threading.Thread(target=start, args=args, name="rpc-worker", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    raise RpcError(f"the RPC worker on {endpoint} stopped (llama.cpp could not listen or accept)")


def worker_main(argv: Sequence[str]) -> None:
    """`HOST:PORT [--threads N] [--cache DIR]`: start a worker as the command line would.

    For tests and `python -c "from runtime.rpc import worker; worker.worker_main([...])"`: one line on
    stderr and exit code 1 for every error, 130 for Ctrl-C.
    """
    from runtime.engine import settings
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.engine.devices.variants import CpuError

    args = list(argv)
    threads = settings.default_threads()
    cache: Optional[Path] = None
    try:
        while len(args) > 1 and args[-2] in ("--threads", "--cache"):
            value = args.pop()
            if args.pop() == "--threads":
                threads = int(value)
            else:
                cache = Path(value)
        if len(args) != 1:
            raise RpcError("usage: HOST:PORT [--threads N] [--cache DIR]")
        ((host, port),) = parse_endpoints(args[0], "the worker's address")
        check_listen(host, port)
        warning = exposure_warning(host, port)
        if warning:
            sys.stderr.write(warning + "\n")
        engine.set_verbose(False)
        choice = cpu.choose()
        engine.start_backend(choice.path)
        sys.stderr.write(
            f"llamapyz RPC worker on {format_endpoint(host, port)}: CPU {choice.variant}, "
            f"{threads} threads\n"
        )
        sys.stderr.flush()
        serve_worker(host, port, threads, cache)
    except (RpcError, CpuError, engine.EngineError, ValueError) as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
