"""The one message llamapyz sends to an RPC worker itself: the protocol's HELLO.

It checks a worker before ggml connects to it, because ggml-rpc ends the whole process
(GGML_ABORT) when a worker cannot be reached or speaks another version.
"""

from __future__ import annotations

import socket
import struct

from runtime.rpc.endpoints import RpcError, format_endpoint, ipv4_address

# What this runtime's libggml-rpc speaks (ggml/include/ggml-rpc.h); tests/test_rpc.py checks
# that a worker started from the same library says the same in its HELLO.
PROTOCOL = (7, 0, 0)
CHECK_TIMEOUT = 5.0

_CMD_HELLO = 14  # RPC_CMD_HELLO, "must be always 14" (ggml-rpc.cpp)
_CONN_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE (transport.h): rpc_msg_hello_req is this many bytes
_HELLO_RSP_SIZE = 4 + _CONN_CAPS_SIZE  # major, minor, patch, padding, conn_caps


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
    address = ipv4_address(host, port, endpoint, doing)
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
