"""llama.cpp's RPC backend: lend this machine's CPU to another llamapyz, or split a model's
layers over such workers.

Nothing here is a protocol of our own. The worker is ggml's `ggml_backend_rpc_start_server`
and the client side is ggml's RPC device, both from `libggml-rpc.so`, which `_rpc_reg` loads
with `ggml_backend_load` into the libggml that libllama links to (as `engine.start_backend`
does for the CPU variant); their functions come from `ggml_backend_reg_get_proc_address`. The
only bytes this module sends itself are the protocol's HELLO, to check a worker before ggml
connects to it: ggml-rpc ends the whole process (GGML_ABORT) when a worker cannot be reached.

Worker, in the order the command line calls it:

    rpc.check_listen(host, port)           # fail fast: RpcError("cannot listen on ...")
    if not rpc.is_loopback(host): warn     # rpc.exposure_warning(host, port) gives the text
    engine.set_verbose(verbose)
    engine.start_backend(cpu.choose(...).path)
    rpc.serve_worker(host, port, threads, cache_dir=None)   # blocks; Ctrl-C ends it

Client (`--rpc host:port,host:port`):

    endpoints = rpc.parse_endpoints(text)  # RpcError for a malformed list: before anything loads
    engine.set_verbose(verbose)            # first: installs the engine's abort callback
    engine.start_backend(cpu.choose(...).path)
    devices = rpc.add_servers(endpoints)   # checks each worker (HELLO), then registers it
    offload = rpc.plan_offload(devices, weights, include_local=..., n_layer=...)
    # engine.Model.__init__, after its own `params.n_gpu_layers = 0` and load_mode, right
    # before llama_model_load_from_file(_ptr):
    offload.apply(params)                  # and hold `offload` as long as the model

`add_servers` also replaces the engine's abort message for aborts that come from ggml-rpc
(a worker that stops mid-generation): one line naming the worker, exit code 1.
"""

from __future__ import annotations

import ctypes
import ipaddress
import math
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# What this runtime's libggml-rpc speaks (ggml/include/ggml-rpc.h); tests/test_rpc.py checks
# that a worker started from the same library says the same in its HELLO.
PROTOCOL = (7, 0, 0)
DEFAULT_PORT = 50052
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS, and llama_max_devices(): the length of tensor_split
CHECK_TIMEOUT = 5.0

_CMD_HELLO = 14  # RPC_CMD_HELLO, "must be always 14" (ggml-rpc.cpp)
_CONN_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE (transport.h): rpc_msg_hello_req is this many bytes
_HELLO_RSP_SIZE = 4 + _CONN_CAPS_SIZE  # major, minor, patch, padding, conn_caps
_DEVICE_CPU = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator", 4: "meta"}
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class RpcError(Exception):
    """A worker cannot be reached, cannot listen, or was given badly."""


# --------------------------------------------------------------------------- endpoints


def format_endpoint(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return False  # looks like an IPv4 address, but is not one (300.1.2.3, 1.2.3)
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def _parse_one(item: str, what: str) -> tuple[str, int]:
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise RpcError(f"{what}: {item!r} opens a bracket it does not close; write [::1]:50052")
        host, rest = item[1:close], item[close + 1 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise RpcError(
                f"{what}: {item!r} has {host!r} in brackets, which is not an IPv6 address"
            ) from None
        if not rest.startswith(":"):
            raise RpcError(f"{what}: {item!r} has no port; give it as [HOST]:PORT, as [::1]:50052")
        port_text = rest[1:]
    else:
        if item.count(":") > 1:
            raise RpcError(
                f"{what}: write the IPv6 address in {item!r} in brackets, as [::1]:50052"
            )
        host, colon, port_text = item.partition(":")
        if not colon:
            raise RpcError(
                f"{what}: {item!r} has no port; give it as HOST:PORT (a worker's usual port is {DEFAULT_PORT})"
            )
        if not host:
            raise RpcError(f"{what}: {item!r} has no host; give it as HOST:PORT")
        if not _valid_host(host):
            raise RpcError(f"{what}: {item!r} has a bad host {host!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RpcError(
            f"{what}: {item!r} has a bad port {port_text!r}; a port is a number from 1 to 65535"
        )
    return host, int(port_text)


def parse_endpoints(text: str, what: str = "--rpc") -> list[tuple[str, int]]:
    """`host1:50052,host2:50052` (or `[::1]:50052`) as (host, port) pairs, in order.

    Raises RpcError, one sentence that starts with `what`, for an empty list, an empty item,
    a missing or bad port, a bad host, a worker named twice or more than 16 workers.
    """
    if not text.strip():
        raise RpcError(f"{what} needs at least one worker, as HOST:PORT")
    found: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise RpcError(f"{what}: {text!r} has an empty item; separate workers with one comma")
        endpoint = _parse_one(item, what)
        if endpoint in found:
            raise RpcError(f"{what}: {format_endpoint(*endpoint)} is named twice")
        found.append(endpoint)
    if len(found) > MAX_SERVERS:
        raise RpcError(f"{what} names {len(found)} workers; llama.cpp takes at most {MAX_SERVERS}")
    return found


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> Optional[str]:
    """The warning to print when a worker listens beyond this machine, else None."""
    if is_loopback(host):
        return None
    return (
        f"warning: the RPC worker on {format_endpoint(host, port)} takes commands from anyone who "
        "can reach that address, with no password or encryption; use it only on a network you trust"
    )


def _ipv4_only(host: str, endpoint: str, doing: str) -> None:
    try:
        if ipaddress.ip_address(host).version == 6:
            raise RpcError(
                f"{doing} {endpoint} (llama.cpp's RPC backend speaks IPv4 only; "
                "use an IPv4 address or a host name)"
            )
    except ValueError:
        pass


def _ipv4_address(host: str, port: int, endpoint: str, doing: str) -> tuple[str, int]:
    """The IPv4 socket address ggml-rpc would use for `host` (it resolves with gethostbyname)."""
    _ipv4_only(host, endpoint, doing)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RpcError(f"{doing} {endpoint} ({exc.strerror or 'unknown host'})") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


# --------------------------------------------------------------------------- the HELLO check


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def server_version(host: str, port: int, timeout: float = CHECK_TIMEOUT) -> tuple[int, int, int]:
    """The RPC protocol version the worker at host:port answers HELLO with.

    Speaks exactly what ggml-rpc's client does first: `| cmd (1 byte) = 14 | size (8 bytes) |
    conn_caps (24 zero bytes: plain TCP) |`; the answer is `| size (8 bytes) = 28 | major |
    minor | patch | padding | conn_caps (24) |`. Then it closes, so the worker (which serves
    one client at a time) is free for ggml's own connection.
    """
    endpoint = format_endpoint(host, port)
    doing = "cannot reach the RPC worker"
    address = _ipv4_address(host, port, endpoint, doing)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(address)
        except socket.timeout:
            raise RpcError(f"{doing} {endpoint} (no answer in {timeout:g} s)") from None
        except OSError as exc:
            raise RpcError(f"{doing} {endpoint} ({exc.strerror or exc})") from None
        try:
            sock.sendall(struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _recv_exactly(sock, 8))
            if size != _HELLO_RSP_SIZE:
                raise RpcError(
                    f"the RPC worker {endpoint} answered the handshake with a {size}-byte message, "
                    f"not the {_HELLO_RSP_SIZE} bytes of protocol {_version_text(PROTOCOL)}; "
                    "it is not a llama.cpp RPC worker of the same version"
                )
            reply = _recv_exactly(sock, size)
        except socket.timeout:
            raise RpcError(
                f"the RPC worker {endpoint} did not answer the handshake in {timeout:g} s "
                "(a worker serves one client at a time: is another one using it?)"
            ) from None
        except OSError:
            raise RpcError(
                f"the RPC worker {endpoint} closed the connection during the handshake; "
                f"it may speak another version of llama.cpp's RPC protocol than {_version_text(PROTOCOL)}"
            ) from None
    finally:
        sock.close()
    return reply[0], reply[1], reply[2]


def _version_text(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def check_endpoint(host: str, port: int, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise RpcError, naming the endpoint, unless a worker there speaks our RPC protocol.

    The same test ggml-rpc makes (same major version, minor not newer than ours), made first
    so that a failure is one sentence instead of ggml's abort.
    """
    major, minor, patch = server_version(host, port, timeout)
    if major != PROTOCOL[0] or minor > PROTOCOL[1]:
        raise RpcError(
            f"the RPC worker {format_endpoint(host, port)} speaks RPC protocol "
            f"{major}.{minor}.{patch} and this llamapyz speaks {_version_text(PROTOCOL)}; "
            "run the same llamapyz (or llama.cpp) version on both sides"
        )


# --------------------------------------------------------------------------- ggml plumbing


class _Ggml:
    """libggml (the registry) and libggml-base (devices, abort), with the signatures we call."""

    def __init__(self) -> None:
        from runtime import engine

        engine.bindings()  # loads libllama, and with it the libggml it links to
        reg = ctypes.CDLL(str(engine.ggml_library()))
        base = ctypes.CDLL(str(engine.lib_dir() / "libggml-base.so.0"))
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for lib, name, res, args in (
            (reg, "ggml_backend_load", vp, [cp]),
            (reg, "ggml_backend_reg_by_name", vp, [cp]),
            (reg, "ggml_backend_register", None, [vp]),
            (reg, "ggml_backend_dev_count", sz, []),
            (reg, "ggml_backend_dev_get", vp, [sz]),
            (reg, "ggml_backend_dev_by_type", vp, [ctypes.c_int]),
            (base, "ggml_backend_reg_name", cp, [vp]),
            (base, "ggml_backend_reg_dev_count", sz, [vp]),
            (base, "ggml_backend_reg_dev_get", vp, [vp, sz]),
            (base, "ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            (base, "ggml_backend_dev_name", cp, [vp]),
            (base, "ggml_backend_dev_description", cp, [vp]),
            (base, "ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
            (base, "ggml_backend_dev_type", ctypes.c_int, [vp]),
            (base, "ggml_backend_dev_backend_reg", vp, [vp]),
            (base, "ggml_set_abort_callback", vp, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:  # the functions set above, for mypy
        raise AttributeError(name)


_ggml_handle: Optional[_Ggml] = None
_rpc_reg_handle: Optional[int] = None
_added: dict[tuple[str, int], list[int]] = {}  # endpoint -> its devices, registered once


def _ggml() -> _Ggml:
    global _ggml_handle
    if _ggml_handle is None:
        _ggml_handle = _Ggml()
    return _ggml_handle


def rpc_library() -> Path:
    """libggml-rpc.so: beside libllama, or in site-packages/bin with the CPU variants."""
    from runtime import cpu

    for directory in cpu.variant_dirs():
        path = directory / "libggml-rpc.so"
        if path.exists():
            return path
    raise RpcError("this llamapyz has no RPC backend (libggml-rpc.so is not in the bundle)")


def _rpc_reg() -> int:
    """The RPC backend's registry entry, loaded once into the libggml libllama uses."""
    global _rpc_reg_handle
    if _rpc_reg_handle is None:
        g = _ggml()
        reg = g.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            path = rpc_library()
            reg = g.ggml_backend_load(str(path).encode())
            if not reg:
                raise RpcError(f"cannot load the RPC backend {path}")
        _rpc_reg_handle = int(reg)
    return _rpc_reg_handle


def _proc(name: str, prototype: Any) -> Any:
    address = _ggml().ggml_backend_reg_get_proc_address(_rpc_reg(), name.encode())
    if not address:
        raise RpcError(f"the RPC backend has no {name}")
    return prototype(address)


_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)


# --------------------------------------------------------------------------- client


def add_servers(endpoints: Sequence[tuple[str, int]], timeout: float = CHECK_TIMEOUT) -> list[int]:
    """Check and register each worker; return its devices (ggml_backend_dev_t), in order.

    Call after `engine.set_verbose` and `engine.start_backend`. Each worker is checked with
    `check_endpoint` first (RpcError naming it), then `ggml_backend_rpc_add_server` connects
    and `ggml_backend_register` lists its devices, so llama.cpp and `devices_summary` see them.
    A worker added before is not checked or registered again. Also installs the abort message
    that names a worker lost later (see `_install_abort_message`).
    """
    for host, port in endpoints:
        if (host, port) not in _added:
            check_endpoint(host, port, timeout)
    _install_abort_message()  # before ggml connects: a worker may stop after its check
    add = _proc("ggml_backend_rpc_add_server", _ADD_SERVER)
    g = _ggml()
    devices: list[int] = []
    for host, port in endpoints:
        if (host, port) not in _added:
            reg = add(format_endpoint(host, port).encode())
            if not reg:
                raise RpcError(f"the RPC worker {format_endpoint(host, port)} offers no device")
            g.ggml_backend_register(reg)
            _added[(host, port)] = [
                int(g.ggml_backend_reg_dev_get(reg, i))
                for i in range(int(g.ggml_backend_reg_dev_count(reg)))
            ]
        devices += _added[(host, port)]
    return devices


@dataclass
class Offload:
    """What `apply` writes into a llama_model_params, and the ctypes arrays it points to.

    `devices` is the NULL-terminated ggml_backend_dev_t array, `tensor_split` the per-device
    weights (llama_max_devices() floats; llama.cpp copies them at load), `n_gpu_layers` how
    many of the model's n_layer + 1 offloadable units (the repeating layers, then the output
    layer) go to the devices; the first layers left over, and the input embedding, stay on
    the local CPU.
    """

    devices: Any
    tensor_split: Any
    n_gpu_layers: int
    local_layers: Optional[int] = None  # how many units stay on this machine, when asked

    def apply(self, params: Any) -> None:
        """Set devices, n_gpu_layers, split_mode (by layer) and tensor_split on `params`.

        Call it on the struct the engine passes to llama_model_load_from_file(_ptr), after the
        engine's own settings (it sets n_gpu_layers = 0). llama.cpp reads the two arrays during
        the load (it copies tensor_split, and the device list into the model) but keeps the
        dangling pointers in the model's params: hold this object as long as the model.
        """
        from runtime import engine

        params.devices = ctypes.cast(self.devices, ctypes.c_void_p).value
        params.n_gpu_layers = self.n_gpu_layers
        params.split_mode = engine.bindings().LLAMA_SPLIT_MODE_LAYER
        params.tensor_split = ctypes.cast(self.tensor_split, ctypes.POINTER(ctypes.c_float))


def plan_offload(
    devices: Sequence[int],
    weights: Optional[Sequence[float]] = None,
    *,
    include_local: bool = False,
    n_layer: Optional[int] = None,
) -> Offload:
    """How to split a model over `devices` (from add_servers) and, if asked, this machine.

    `weights`: one number per device, plus one last for this machine when `include_local`
    (`--tensor-split 3,1,1` style; only the ratios count); None gives each an equal share.
    Without `include_local` every layer goes to the workers (n_gpu_layers = -1, "all");
    with it, this machine keeps its share of the n_layer + 1 units, so `n_layer` (the
    model's block count, `layer_count`) is needed.
    """
    if not devices:
        raise RpcError("no RPC devices to split the model over")
    if len(devices) > MAX_SERVERS:
        raise RpcError(f"llama.cpp splits a model over at most {MAX_SERVERS} devices")
    count = len(devices) + (1 if include_local else 0)
    shares = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(shares) != count:
        raise RpcError(
            f"the split has {len(shares)} weights for {count} devices"
            + (" (the workers, then this machine)" if include_local else "")
        )
    if any(not math.isfinite(w) or w < 0 for w in shares) or sum(shares) <= 0:
        raise RpcError("the split's weights must be numbers >= 0, and not all 0")
    n_gpu_layers, local_layers = -1, None
    if include_local:
        if n_layer is None or n_layer < 1:
            raise RpcError("keeping a share of the model here needs its layer count")
        units = n_layer + 1
        local_layers = min(units, round(units * shares[-1] / sum(shares)))
        n_gpu_layers = units - local_layers
        shares = shares[:-1]  # all 0 here means local_layers == units: nothing offloaded
    device_array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
    split_array = (ctypes.c_float * MAX_SERVERS)(*shares)
    return Offload(device_array, split_array, n_gpu_layers, local_layers)


def apply_to_params(
    params: Any,
    devices: Sequence[int],
    weights: Optional[Sequence[float]] = None,
    *,
    include_local: bool = False,
    n_layer: Optional[int] = None,
) -> Offload:
    """`plan_offload(...)` then `.apply(params)`; hold the result until the model has loaded."""
    offload = plan_offload(devices, weights, include_local=include_local, n_layer=n_layer)
    offload.apply(params)
    return offload


def layer_count(path: Path, offset: int = 0) -> int:
    """The model's `<arch>.block_count`, read from the GGUF header at `offset` in `path`."""
    # GGUF value types of a fixed size, by their struct format; 8 is a string, 9 an array
    fixed = {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }

    try:
        with open(path, "rb") as fh:
            fh.seek(offset)

            def take(fmt: str) -> Any:
                size = struct.calcsize("<" + fmt)
                data = fh.read(size)
                if len(data) != size:
                    raise EOFError
                return struct.unpack("<" + fmt, data)[0]

            def text() -> str:
                data = fh.read(take("Q"))
                return data.decode("utf-8", "replace")

            if fh.read(4) != b"GGUF" or take("I") < 2:
                raise ValueError
            take("Q")  # tensor count
            arch, counts = "", {}
            for _ in range(take("Q")):
                key, kind = text(), take("I")
                if kind in fixed:
                    value = take(fixed[kind])
                    if key.endswith(".block_count"):
                        counts[key] = int(value)
                elif kind == 8:
                    value = text()
                    if key == "general.architecture":
                        arch = value
                elif kind == 9:
                    item, n = take("I"), take("Q")
                    if item in fixed:
                        fh.seek(struct.calcsize("<" + fixed[item]) * n, 1)
                    elif item == 8:
                        for _ in range(n):
                            fh.seek(take("Q"), 1)
                    else:
                        raise ValueError
                else:
                    raise ValueError
                if arch and f"{arch}.block_count" in counts:
                    return counts[f"{arch}.block_count"]
    except (OSError, EOFError, ValueError, struct.error):
        pass
    raise RpcError(f"cannot read the layer count of the model in {path}")


def devices_summary() -> list[str]:
    """One line per device ggml has registered (name, description, type, memory), for --system-info.

    Asking an RPC device for its memory is a call to its worker: call this after add_servers.
    """
    g = _ggml()
    lines = []
    for i in range(int(g.ggml_backend_dev_count())):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (g.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
        what = (g.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        kind = _DEVICE_TYPES.get(int(g.ggml_backend_dev_type(dev)), "device")
        reg = g.ggml_backend_dev_backend_reg(dev)
        if reg and g.ggml_backend_reg_name(reg) == b"RPC":
            kind = "RPC worker"
        memory = (
            f"{free.value / 2**20:,.0f} MiB free of {total.value / 2**20:,.0f} MiB"
            if total.value
            else "memory unknown"
        )
        lines.append(f"{name}: {what} ({kind}, {memory})")
    return lines


# --------------------------------------------------------------------------- a lost worker

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
        for host, port in _added:
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
            lost = [format_endpoint(*endpoint) for endpoint in _added]
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


def _install_abort_message() -> None:
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
        from runtime import backend

        text = line or f"Error: llama.cpp stopped ({message})"
        backend.fatal(text[len("Error: ") :] if text.startswith("Error: ") else text)

    _abort_callback = _ABORT(on_abort)
    previous = _ggml().ggml_set_abort_callback(ctypes.cast(_abort_callback, ctypes.c_void_p))
    _previous_abort = _ABORT(previous) if previous else None


# --------------------------------------------------------------------------- worker


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
    address, _ = _ipv4_address(host, port, endpoint, doing)
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
    from runtime.boot import cache_dir as default_cache

    endpoint = format_endpoint(host, port)
    address = check_listen(host, port)
    cache = Path(cache_dir) if cache_dir is not None else default_cache() / "rpc"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RpcError(f"cannot use {cache} as the worker's cache ({exc.strerror})") from None
    g = _ggml()
    start = _proc("ggml_backend_rpc_start_server", _START_SERVER)
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

    For tests and `python -c "from runtime import rpc; rpc.worker_main([...])"`: one line on
    stderr and exit code 1 for every error, 130 for Ctrl-C.
    """
    from runtime import cpu, engine, settings

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
    except (RpcError, cpu.CpuError, engine.EngineError, ValueError) as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
