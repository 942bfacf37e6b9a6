"""Endpoint parsing: tcp://HOST:PORT, ipc://PATH and inproc://NAME, with errors that name the bad value."""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["Endpoint", "parse_endpoint", "parse_endpoints", "free_port", "free_tcp_endpoint"]

_EXPECTED = "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
_IPC_PATH_MAX = 107  # a Unix socket's sun_path holds 108 bytes with the final NUL (104 on BSD and macOS)
_TCP = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]\s]+)):(?P<port>\*|\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    """A parsed ZeroMQ endpoint; ``str()`` gives it back in zmq's syntax."""

    transport: str
    address: str  # HOST:PORT for tcp, the path or name otherwise
    host: str = ""
    port: int | None = None  # None means "any port" (``*`` or 0), for binding only

    def __str__(self) -> str:
        return f"{self.transport}://{self.address}"

    @property
    def wildcard_port(self) -> bool:
        return self.transport == "tcp" and self.port is None


def parse_endpoint(text: str, *, for_bind: bool = False) -> Endpoint:
    """Parse and check ``text``; port 0 or ``*`` is allowed only when ``for_bind``."""
    if not isinstance(text, str):
        raise ConfigurationError(f"bad endpoint {text!r}: {_EXPECTED}")
    transport, sep, rest = text.partition("://")
    if not sep or not rest:
        raise ConfigurationError(f"bad endpoint {text!r}: {_EXPECTED}")
    if transport == "ipc" and len(rest.encode(errors="surrogatepass")) > _IPC_PATH_MAX:
        raise ConfigurationError(f"bad endpoint {text[:60]!r}...: an ipc path is at most {_IPC_PATH_MAX} bytes")
    if transport in ("ipc", "inproc"):
        return Endpoint(transport, rest)
    if transport != "tcp":
        raise ConfigurationError(f"bad endpoint {text!r}: unknown transport {transport!r}; {_EXPECTED}")
    match = _TCP.match(rest)
    if not match:
        raise ConfigurationError(f"bad endpoint {text!r}: {_EXPECTED}")
    host = match["v6"] or match["host"]
    raw_port = match["port"]
    port = None if raw_port == "*" else int(raw_port)
    if port is not None and port > 65535:
        raise ConfigurationError(f"bad endpoint {text!r}: port {port} is above 65535")
    if port == 0:
        port = None
    if port is None and not for_bind:
        raise ConfigurationError(f"bad endpoint {text!r}: a connecting endpoint needs a real port, not 0 or *")
    if host == "*" and not for_bind:
        raise ConfigurationError(f"bad endpoint {text!r}: a connecting endpoint needs a host, not *")
    shown = f"[{host}]" if match["v6"] else host
    return Endpoint("tcp", f"{shown}:{'*' if port is None else port}", host, port)


def parse_endpoints(value: str | Endpoint | Sequence[str], *, for_bind: bool = False) -> list[str]:
    """Accept one endpoint or a sequence (or a comma-separated string); return them checked, as strings."""
    if isinstance(value, Endpoint):
        return [str(value)]
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items or any(not isinstance(i, (str, Endpoint)) for i in items):
        raise ConfigurationError(f"bad endpoints {value!r}: give an endpoint string or a list of them")
    return [str(parse_endpoint(str(i).strip(), for_bind=for_bind)) for i in items]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (prefer binding to port 0 where the API allows it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``tcp://host:PORT`` with a port that was free a moment ago."""
    return f"tcp://{host}:{free_port(host)}"
