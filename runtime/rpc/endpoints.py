"""Where RPC workers are: `HOST:PORT` lists parsed and checked, and which addresses reach
only this machine.

Standard library only (no ctypes, no llama.cpp), so the command line can parse `--rpc`
before anything loads, and import this on every run.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Optional

DEFAULT_PORT = 50052
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS, and llama_max_devices(): the length of tensor_split

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class RpcError(Exception):
    """A worker cannot be reached, cannot listen, or was given badly."""


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


def ipv4_address(host: str, port: int, endpoint: str, doing: str) -> tuple[str, int]:
    """The IPv4 socket address ggml-rpc would use for `host` (it resolves with gethostbyname)."""
    _ipv4_only(host, endpoint, doing)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RpcError(f"{doing} {endpoint} ({exc.strerror or 'unknown host'})") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])
