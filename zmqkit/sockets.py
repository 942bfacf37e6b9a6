"""The socket factory: one context per process, and every safe default applied in one place.

Patterns ask for a socket by role (``make_socket("dealer", options)``) and never set options by hand.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .endpoints import parse_endpoint, parse_endpoints
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .security import Curve

__all__ = [
    "ROLES",
    "SocketOptions",
    "context",
    "async_context",
    "make_socket",
    "resolve_options",
    "bind",
    "connect",
    "attach",
    "unbind_all",
    "monitor_reader",
    "send_frame",
    "recv_frame",
    "send_frames",
    "recv_frames",
    "NOBLOCK",
    "set_recv_timeout",
    "has_input",
    "track_socket",
]

ROLES: dict[str, int] = {
    "push": zmq.PUSH,
    "pull": zmq.PULL,
    "pub": zmq.PUB,
    "sub": zmq.SUB,
    "xpub": zmq.XPUB,
    "xsub": zmq.XSUB,
    "dealer": zmq.DEALER,
    "router": zmq.ROUTER,
    "req": zmq.REQ,
    "rep": zmq.REP,
    "pair": zmq.PAIR,
}
# IMMEDIATE keeps a PUSH/DEALER/REQ from queueing messages for peers that are not connected yet (or any more),
# so work goes to live peers instead of waiting in a pipe to a dead one.
_IMMEDIATE_ROLES = {"push", "dealer", "req"}


_KEEP: Any = object()  # SocketOptions.with_: an option not given keeps its value


@dataclass(frozen=True)
class SocketOptions:
    """Socket settings with safe defaults; every field is checked when the object is made.

    ``max_msg_size`` is in bytes (-1 = unlimited): a peer that sends a bigger message is disconnected.
    Times are milliseconds. ``immediate``/``router_mandatory``/``xpub_verbose`` default by role when None.
    ``xpub_verbose`` (XPUB_VERBOSER, on by default for XPUB) passes every subscribe and unsubscribe up to the
    application, so repeated subscriptions from new subscribers are seen and counts stay balanced.
    """

    linger_ms: int = 1000
    sndhwm: int = 1000
    rcvhwm: int = 1000
    max_msg_size: int = 64 * 1024 * 1024
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 6000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    immediate: bool | None = None
    router_mandatory: bool | None = None
    xpub_verbose: bool | None = None
    curve: Curve | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("immediate", "router_mandatory", "xpub_verbose"):
                if value is not None and not isinstance(value, bool):
                    raise ConfigurationError(f"bad socket option {f.name}={value!r}: expected True, False or None")
            elif f.name == "curve":
                from .security import Curve

                if value is not None and not isinstance(value, Curve):
                    raise ConfigurationError(f"bad socket option curve={value!r}: expected a zmqkit.Curve")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(f"bad socket option {f.name}={value!r}: expected an integer")
            elif value < (-1 if f.name in ("linger_ms", "max_msg_size") else 0):
                raise ConfigurationError(f"bad socket option {f.name}={value!r}: must not be negative")

    def with_(
        self,
        *,
        linger_ms: int = _KEEP,
        sndhwm: int = _KEEP,
        rcvhwm: int = _KEEP,
        max_msg_size: int = _KEEP,
        heartbeat_ivl_ms: int = _KEEP,
        heartbeat_timeout_ms: int = _KEEP,
        reconnect_ivl_ms: int = _KEEP,
        reconnect_ivl_max_ms: int = _KEEP,
        immediate: bool | None = _KEEP,
        router_mandatory: bool | None = _KEEP,
        xpub_verbose: bool | None = _KEEP,
        curve: Curve | None = _KEEP,
    ) -> SocketOptions:
        """A copy with the options given changed (and checked); the others as they are."""
        given = dict(locals())
        del given["self"]
        return replace(self, **{name: value for name, value in given.items() if value is not _KEEP})


DEFAULT_OPTIONS = SocketOptions()


def _max_sockets(ctx: zmq.Context) -> int:
    """As many sockets as the process may open files (each socket holds one), not libzmq's default 1023: a
    request-reply client keeps a socket per server, and a process may run many clients."""
    try:
        import resource

        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows): keep libzmq's default
        return int(ctx.get(zmq.MAX_SOCKETS))
    if files == resource.RLIM_INFINITY:
        files = 1 << 16
    return max(int(ctx.get(zmq.MAX_SOCKETS)), min(int(ctx.get(zmq.SOCKET_LIMIT)), files))


class _ProcessContext:
    """One libzmq context per process, made again in a forked child (a context must not cross fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._sync: zmq.Context | None = None
        self._async: zmq.asyncio.Context | None = None

    def sync(self) -> zmq.Context:
        if self._pid != os.getpid() or self._sync is None or self._sync.closed:
            with self._lock:
                if self._pid != os.getpid() or self._sync is None or self._sync.closed:
                    self._sync = zmq.Context()
                    self._sync.max_sockets = _max_sockets(self._sync)
                    self._async = None
                    self._pid = os.getpid()
        return self._sync

    def asyncio(self) -> zmq.asyncio.Context:
        sync = self.sync()
        if self._async is None:
            with self._lock:
                if self._async is None:
                    # A shadow shares the libzmq context, so inproc, ZAP and fork-handling stay one thing.
                    self._async = zmq.asyncio.Context.shadow(sync.underlying)
        return self._async


_CONTEXT = _ProcessContext()
_open_sockets: weakref.WeakSet[zmq.Socket] = weakref.WeakSet()


def context() -> zmq.Context:
    """The process-wide zmq context (re-created after fork)."""
    return _CONTEXT.sync()


def async_context() -> zmq.asyncio.Context:
    """The process-wide context for asyncio sockets (a shadow of :func:`context`)."""
    return _CONTEXT.asyncio()


def make_socket(
    role: str,
    options: SocketOptions | None = None,
    *,
    asyncio: bool = False,
    ctx: zmq.Context | None = None,
) -> Any:
    """Create a socket of ``role`` with every default applied, before any bind or connect.

    Returns a ``zmq.Socket`` (``zmq.asyncio.Socket`` when ``asyncio``).
    """
    if role not in ROLES:
        raise ConfigurationError(f"unknown socket role {role!r}: expected one of {', '.join(ROLES)}")
    opts = options or DEFAULT_OPTIONS
    if not isinstance(opts, SocketOptions):
        raise ConfigurationError(f"bad options {opts!r}: expected zmqkit.SocketOptions")
    context_ = ctx or (async_context() if asyncio else context())
    sock = context_.socket(ROLES[role])
    try:
        sock.linger = opts.linger_ms
        sock.sndhwm = opts.sndhwm
        sock.rcvhwm = opts.rcvhwm
        sock.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_size)
        sock.setsockopt(zmq.HEARTBEAT_IVL, opts.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, opts.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, opts.heartbeat_timeout_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, opts.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, opts.reconnect_ivl_max_ms)
        immediate = opts.immediate if opts.immediate is not None else role in _IMMEDIATE_ROLES
        if immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if role == "router":
            # Fail loudly on a reply to a peer that left, instead of dropping it in silence.
            mandatory = opts.router_mandatory if opts.router_mandatory is not None else True
            sock.setsockopt(zmq.ROUTER_MANDATORY, int(mandatory))
        if role == "req":
            # Lazy Pirate in libzmq: after a timeout the socket may send again (RELAXED), and a late reply to
            # the request it gave up on is dropped rather than taken for the next one's (CORRELATE).
            sock.setsockopt(zmq.REQ_RELAXED, 1)
            sock.setsockopt(zmq.REQ_CORRELATE, 1)
        if role == "xpub" and opts.xpub_verbose is not False:
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        if opts.curve is not None:
            opts.curve.apply(sock)
    except BaseException:
        sock.close(linger=0)
        raise
    _open_sockets.add(sock)
    return sock


def resolve_options(options: SocketOptions | None, curve: Curve | None = None, **changes: Any) -> SocketOptions:
    """What every class does with its ``options=`` and ``curve=``: the options (or defaults) with both applied."""
    opts = options if options is not None else DEFAULT_OPTIONS
    if not isinstance(opts, SocketOptions):
        raise ConfigurationError(f"bad options {opts!r}: expected zmqkit.SocketOptions")
    if curve is not None:
        changes["curve"] = curve
    return opts.with_(**changes) if changes else opts


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind ``sock`` and return the real endpoint (port 0 or ``*`` picks a free port)."""
    ep = parse_endpoint(endpoint, for_bind=True)
    target = str(ep)
    try:
        sock.bind(target)
    except zmq.ZMQError as exc:
        raise ConfigurationError(f"cannot bind {endpoint!r}: {exc.strerror}") from None
    real = sock.getsockopt(zmq.LAST_ENDPOINT)
    return real.decode() if isinstance(real, bytes) else str(real)


def connect(sock: zmq.Socket, endpoint: str) -> str:
    """Connect ``sock`` to a checked endpoint; return it."""
    target = str(parse_endpoint(endpoint))
    try:
        sock.connect(target)
    except zmq.ZMQError as exc:
        raise ConfigurationError(f"cannot connect to {endpoint!r}: {exc.strerror}") from None
    return target


_monitor_ids = itertools.count(1)


def monitor_reader(sock: zmq.Socket, events: int, purpose: str) -> zmq.Socket:
    """Start ``sock``'s socket monitor for ``events`` and return the PAIR that reads them: a plain socket on the
    same libzmq context (asyncio sockets' contexts are shadows of it), never to be read blocking by asyncio.

    Stop the monitor (``sock.disable_monitor()``) before closing the reader: libzmq's I/O thread sends each
    event with a blocking send, and a send to a reader that is gone, or full, stops the whole context. For the
    same reason the reader has no receive limit (events are a few bytes each).
    """
    # A fresh inproc name each time: libzmq frees a closed monitor's name later than the socket's descriptor.
    address = f"inproc://zmqkit-{purpose}-{os.getpid()}-{next(_monitor_ids)}"
    sock.monitor(address, events)
    ctx = sock.context if type(sock.context) is zmq.Context else zmq.Context.shadow(sock.context.underlying)
    reader: zmq.Socket = ctx.socket(zmq.PAIR)
    reader.linger = 0
    reader.rcvhwm = 0
    reader.connect(address)
    return reader


def unbind_all(sock: zmq.Socket, endpoints: Sequence[str], timeout: float = 1.0) -> None:
    """Unbind ``sock`` from its bound ``endpoints`` and wait (up to ``timeout`` s) until libzmq has closed their
    listeners, so the addresses can be bound again at once (a closed socket frees them later, in libzmq's
    reaper). Call it in the socket's thread, just before closing it: it takes over the socket's monitor."""
    watch = monitor_reader(sock, zmq.EVENT_CLOSED, "unbind")
    try:
        bound = [ep for ep in endpoints if not ep.startswith("inproc://")]  # inproc has no listener to wait for
        for endpoint in endpoints:
            with contextlib.suppress(zmq.ZMQError):
                sock.unbind(endpoint)
        deadline = time.monotonic() + timeout
        closed = 0
        while closed < len(bound) and watch.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            event = parse_monitor_message(watch.recv_multipart())
            closed += event["event"] == zmq.EVENT_CLOSED
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        watch.close(linger=0)


def attach(
    sock: zmq.Socket,
    binds: str | Sequence[str] | None,
    connects: str | Sequence[str] | None,
    what: str = "socket",
) -> list[str]:
    """Bind and connect ``sock``; return the real bound endpoints, then the connected ones.

    On any error the socket is closed, so a constructor that fails half-way leaks nothing.
    """
    try:
        if not binds and not connects:
            raise ConfigurationError(f"{what} needs at least one endpoint to bind or connect, got none")
        bound = [bind(sock, ep) for ep in parse_endpoints(binds, for_bind=True)] if binds else []
        return bound + ([connect(sock, ep) for ep in parse_endpoints(connects)] if connects else [])
    except BaseException:
        sock.close(linger=0)
        raise


NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost microseconds per frame on a hot path
_SNDMORE = int(zmq.SNDMORE)
_RCVTIMEO = int(zmq.RCVTIMEO)
# pyzmq's compiled send and recv: the Python wrapper ``zmq.Socket.send`` adds about as much again per frame.
# ``send_frame(sock, data, flags=0)`` and ``recv_frame(sock, flags=0) -> bytes`` are the one-frame hot path;
# a one-frame message is the cheapest round trip libzmq makes.
send_frame = _send = zmq.backend.Socket.send
recv_frame = _recv = zmq.backend.Socket.recv


_get = zmq.backend.Socket.get
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def has_input(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock`` (ZMQ_EVENTS). A socket's file descriptor signals a change, not each
    message, and a send or receive may take that signal: a loop watching the descriptor asks this after one.
    It costs a few microseconds (pyzmq maps the option through an enum): ask it once per wake-up, not per message.
    """
    return bool(cast(int, _get(sock, _EVENTS)) & _POLLIN)


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """``send_multipart`` for hot paths (``flags=NOBLOCK`` raises zmq.Again from the first frame only:
    libzmq takes the rest of a message once its first frame is in)."""
    more = flags | _SNDMORE
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], more)
    _send(sock, frames[last], flags)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """``recv_multipart`` for hot paths; frames read without copy let ``.more`` replace a RCVMORE query."""
    frame = _recv(sock, flags, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts


def set_recv_timeout(sock: zmq.Socket, ms: int) -> None:
    """How long a blocking recv on ``sock`` waits before zmq.Again (ms, -1 = for ever).

    A thread that waits on one socket with a deadline does better with a blocking recv than with a poll and
    then a recv: one call into libzmq instead of two, no poll set to build.
    """
    sock.setsockopt(_RCVTIMEO, ms)


def track_socket(sock: zmq.Socket) -> None:
    """Count a socket the core made outside :func:`make_socket` (a monitor's) in :func:`open_sockets`."""
    _open_sockets.add(sock)


def open_sockets() -> list[zmq.Socket]:
    """Sockets made by :func:`make_socket` in this process that are still open (for leak checks)."""
    return [s for s in list(_open_sockets) if not s.closed]
