"""What the sync and asyncio request-reply runners share: settings, sockets, and moving frames to the protocol.

:class:`ClientCore` and :class:`ServerCore` hold everything but the waiting; :mod:`.sync` waits in threads,
:mod:`.aio` in the event loop. The logic itself is in :mod:`.protocol`.

Why the client has a DEALER per server and not one socket for all: a DEALER connected to many servers deals
requests round-robin, blindly, and queues them to peers that died. With a socket per server the client chooses
the server for each request (least loaded, not one that said goodbye, another one on retry); IMMEDIATE makes a
send to a server that is not connected fail at once instead of queueing. And a message is one frame each way:
a ROUTER client (the zguide's Freelance pattern) would add a routing frame to every send and every receive.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from zmqkit.checks import DEFAULT, Default, check_timeout
from zmqkit.codecs import Codec, get_codec
from zmqkit.endpoints import parse_endpoints
from zmqkit.errors import Closed, ConfigurationError, RequestTimeout, Unavailable
from zmqkit.handshake import HandshakeWatch, refusal
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import (
    NOBLOCK,
    SocketOptions,
    bind,
    connect,
    make_socket,
    recv_frame,
    resolve_options,
    send_frame,
    send_frames,
)

from .protocol import READY_, ClientProtocol, Job, ServerProtocol, run_handler

__all__ = ["ClientCore", "ServerCore", "Value", "recv_routed"]

log = logging.getLogger(__name__)

# A request's body and its reply: the application's data, as its codec makes and reads it.
Value = Any

_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


def _alias(endpoint: str, index: int) -> bytes:
    raw = endpoint.encode()
    return raw if len(raw) <= 255 else b"server-%d" % index


def recv_routed(sock: zmq.Socket, flags: int) -> list[bytes]:
    """One message from a ROUTER: the routing id, then the rest. Raises zmq.Again (with NOBLOCK) from the
    first frame only: messages arrive whole."""
    parts = [recv_frame(sock, flags)]
    frame = recv_frame(sock, flags, False)
    parts.append(frame.bytes)
    while frame.more:
        frame = recv_frame(sock, flags, False)
        parts.append(frame.bytes)
    return parts


class ClientCore:
    """What the sync and asyncio clients share: the protocol, the sockets, and moving frames between them."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float | None = 5.0,
        attempt_timeout: float | None = None,
        retries: int = 2,
        backoff: float = 0.01,
        max_in_flight: int = 1000,
        codec: str | Codec = "auto",
        allow_pickle: bool = False,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``timeout``: each call's default (None: no limit). ``attempt_timeout`` (default: the call's timeout
        split over ``retries + 1`` attempts) bounds one try, after which the request goes to another server."""
        eps = parse_endpoints(endpoints)
        self.timeout = check_timeout(timeout)
        self._codec = get_codec(codec)
        peers = {_alias(ep, i): ep for i, ep in enumerate(eps)}
        self._proto = ClientProtocol(
            peers,
            attempt_timeout=check_timeout(attempt_timeout, "attempt_timeout"),
            retries=retries,
            backoff=backoff,
            max_in_flight=max_in_flight,
            allow_pickle=allow_pickle or getattr(self._codec, "name", "") == "pickle",
            clock=clock,
        )
        self.endpoints = list(peers.values())
        resolved = resolve_options(options, curve)
        # A send that fails must mean "no connection" (the server's requests then go elsewhere at once), never
        # "queue full", which would run them twice: IMMEDIATE, and room for every request the client may have at
        # one server (max_in_flight) and its hellos.
        hwm = resolved.sndhwm and max(resolved.sndhwm, max_in_flight + 64)
        dealer_options = resolved.with_(immediate=True, sndhwm=hwm)
        # Plain sockets for both runners: the asyncio one only sends and reads without blocking, and waits on
        # each socket's file descriptor.
        self._socks: dict[bytes, zmq.Socket] = {}
        self._watches: dict[bytes, HandshakeWatch] = {}  # each socket's handshake outcome, read when sends fail
        self.closed = False
        try:
            for alias, ep in peers.items():
                self._socks[alias] = make_socket("dealer", dealer_options)
                self._watches[alias] = HandshakeWatch(self._socks[alias])
                connect(self._socks[alias], ep)
        except BaseException:
            self._close_sockets()
            raise
        self._proto.tick()
        self._flush()
        self._setup()

    def _setup(self) -> None:
        """The runner's own state, made at the end of ``__init__``."""

    def servers(self) -> dict[str, str]:
        """Each server's endpoint and its state as this client sees it (ready, connecting, leaving, down, suspect)."""
        return {self._proto.peers[alias].endpoint: state for alias, state in self._proto.servers_state().items()}

    def _ready(self) -> list[str]:
        return [peer.endpoint for peer in self._proto.peers.values() if peer.state is READY_]

    def _ready_by(self, timeout: float | None) -> float:
        """When a ``wait_ready(timeout)`` gives up, on the protocol's clock; Closed after close."""
        if self.closed:
            raise self._closed_error()
        limit = check_timeout(timeout, allow_zero=True)
        return self._proto.clock() + (limit if limit is not None else math.inf)

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} for {', '.join(self.endpoints)} is closed: make a new one")

    def _flush(self, sent_to: set[bytes] | None = None) -> None:
        """Send everything the protocol queued; tell it what could not be delivered; add the servers sent to
        to ``sent_to``."""
        proto = self._proto
        out = proto.outbox
        socks = self._socks
        i = 0
        unconnected = False
        while i < len(out):  # undeliverable() may queue more (a request moved to another server)
            alias, msg = out[i]
            i += 1
            try:
                send_frame(socks[alias], msg, NOBLOCK)
            except zmq.Again:  # IMMEDIATE, and a queue with room for all we may send: not connected
                proto.undeliverable(alias, msg)
                unconnected = True
            else:
                if sent_to is not None:
                    sent_to.add(alias)
        out.clear()
        if unconnected:
            # Every server refused our handshake: what waits for one fails now, not at its deadline as "down".
            refused = refusal(self._watches.values(), every=True)
            if refused is not None:
                proto.fail_all(refused)

    def _explain(self, error: Exception) -> Exception:
        """A request's failure; "no server ready" or a timeout becomes AuthenticationFailed if a server refused
        our handshake (asked only when a request failed)."""
        if isinstance(error, (Unavailable, RequestTimeout)):
            refused = refusal(self._watches.values())
            if refused is not None:
                refused.__cause__ = error
                return refused
        return error

    def _drain(self, alias: bytes) -> None:
        """Feed every message waiting on ``alias``'s socket to the protocol (reads until EAGAIN)."""
        sock = self._socks[alias]
        on_message = self._proto.on_message
        with contextlib.suppress(zmq.Again):
            while True:
                on_message(alias, recv_frame(sock, NOBLOCK))

    def _submit(self, body: Value, timeout: float | Default | None) -> bytes:
        """Start a request in the protocol; its frames wait in the outbox for the runner's next ``_flush``."""
        if self.closed:
            raise self._closed_error()
        limit = self.timeout if timeout is DEFAULT else check_timeout(timeout)
        codec_id, payload = self._codec.pack(body)
        # No look at the socket first: news (a goodbye) read later costs at most a refusal and a resend.
        return self._proto.submit(codec_id, payload, limit)

    def _close_sockets(self) -> None:
        self.closed = True
        for watch in self._watches.values():
            watch.close()
        for sock in self._socks.values():
            sock.close(linger=0)


class ServerCore:
    """What the threaded and asyncio servers share: settings, the protocol, running the handler, sending."""

    def __init__(
        self,
        endpoints: str | Sequence[str] | None,
        handler: Callable[[Value], Value],
        *,
        concurrency: int = 1,
        max_queue: int = 1000,
        idempotency_window: int = 10_000,
        codec: str | Codec = "auto",
        allow_pickle: bool = False,
        connect: str | Sequence[str] = (),
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``concurrency``: handlers at once. ``max_queue`` bounds what the server holds (more is refused, and
        clients go elsewhere). At least ``idempotency_window`` recent request ids are remembered with their
        replies (up to twice as many), so a retry is not run twice. ``connect=`` endpoints are connected to
        (e.g. a Proxy's backend) besides binding ``endpoints``."""
        if not callable(handler):
            raise ConfigurationError(f"bad handler {handler!r}: expected a callable taking the request body")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"bad concurrency={concurrency!r}: expected a positive integer")
        self._binds = parse_endpoints(endpoints, for_bind=True) if endpoints else []
        self._connects = parse_endpoints(connect) if connect else []
        if not self._binds and not self._connects:
            raise ConfigurationError(f"bad endpoints {endpoints!r}: give endpoints to bind or connect=")
        self.handler = handler
        self.concurrency = concurrency
        self._codec = get_codec(codec)
        self._allow_pickle = allow_pickle or self._codec.name == "pickle"
        self._proto = ServerProtocol(max_queue=max_queue, window=idempotency_window, clock=clock)
        self._options = resolve_options(options, curve)
        self._refusals = Refusals()
        self._clock = clock
        self.endpoints: list[str] = []
        self._left_cleanly = False
        self._closed = False
        self._setup()

    def _setup(self) -> None:
        """The runner's own state, made at the end of ``__init__``."""

    def stats(self) -> dict[str, int]:
        """Requests executed, duplicates answered from the idempotency window, requests held now, refused
        CURVE handshakes."""
        p = self._proto
        refused = self._refusals.count
        return {"executed": p.executed, "duplicates": p.duplicates, "held": p.held, "auth_failures": refused}

    def _closed_error(self) -> Closed:
        where = ", ".join(self.endpoints or self._binds or self._connects)
        return Closed(f"{type(self).__name__} on {where} is closed: make a new one")

    def _execute(self, job: Job) -> tuple[int, int, bytes]:
        """Run the handler on one job (overridden by RpcServer)."""
        return run_handler(self.handler, self._codec, self._allow_pickle, job)

    def _open(self, router: zmq.Socket) -> None:
        """Bind and connect the ROUTER; remember the real endpoints. The socket is closed if this fails."""
        try:
            self._refusals.watch(router)
            self.endpoints = [bind(router, ep) for ep in self._binds]
            for ep in self._connects:
                connect(router, ep)
        except BaseException:
            router.close(linger=0)
            raise

    def _flush(self, router: zmq.Socket) -> None:
        proto = self._proto
        for frames in proto.outbox:
            try:
                if len(frames) == 2:  # the usual answer: the client's routing id, the message
                    send_frame(router, frames[0], _MORE_NOBLOCK)
                    send_frame(router, frames[1], NOBLOCK)
                else:
                    send_frames(router, frames, NOBLOCK)
            except zmq.ZMQError as exc:
                # The client left (or stopped reading): its reply has nowhere to go.
                log.debug("reply undeliverable (%s) to %r", exc.strerror, frames[0][:64])
                if exc.errno == zmq.EHOSTUNREACH:
                    proto.client_gone(frames[:-1])
        proto.outbox.clear()
