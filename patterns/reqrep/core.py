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
import itertools
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

from ..presence.fabric import Announcer, Fabric, FabricLike, Members, fabric_endpoints
from ..presence.protocol import check_announcement
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
        endpoints: str | Sequence[str] | None = None,
        *,
        service: str | None = None,
        fabric: FabricLike = None,
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
        split over ``retries + 1`` attempts) bounds one try, after which the request goes to another server.

        ``service`` (instead of ``endpoints``): the servers are the instances of that service on the ``fabric``
        (addresses, a Fabric, or None: ``$ZMQKIT_FABRIC``), followed as they come, go into maintenance and leave.
        """
        if service is not None and endpoints is not None:
            raise ConfigurationError(f"give endpoints ({endpoints!r}) or service={service!r}, not both")
        if service is None and endpoints is None:
            raise ConfigurationError("no servers: give endpoints, or service= to find them on a fabric")
        eps = parse_endpoints(endpoints) if endpoints is not None else []
        self.timeout = check_timeout(timeout)
        self._codec = get_codec(codec)
        self._aliases = itertools.count()
        peers = {_alias(ep, next(self._aliases)): ep for ep in eps}
        self._proto = ClientProtocol(
            peers,
            attempt_timeout=check_timeout(attempt_timeout, "attempt_timeout"),
            retries=retries,
            backoff=backoff,
            max_in_flight=max_in_flight,
            allow_pickle=allow_pickle or getattr(self._codec, "name", "") == "pickle",
            dynamic=service is not None,
            clock=clock,
        )
        self.service = service
        self.endpoints = list(peers.values())
        resolved = resolve_options(options, curve)
        # A send that fails must mean "no connection" (the server's requests then go elsewhere at once), never
        # "queue full", which would run them twice: IMMEDIATE, and room for every request the client may have at
        # one server (max_in_flight) and its hellos.
        hwm = resolved.sndhwm and max(resolved.sndhwm, max_in_flight + 64)
        self._dealer_options = resolved.with_(immediate=True, sndhwm=hwm)
        # Plain sockets for both runners: the asyncio one only sends and reads without blocking, and waits on
        # each socket's file descriptor.
        self._socks: dict[bytes, zmq.Socket] = {}
        self._watches: dict[bytes, HandshakeWatch] = {}  # each socket's handshake outcome, read when sends fail
        self.closed = False
        self._members: Members | None = None
        self._applied = 0  # the membership version the server set follows
        try:
            for alias, ep in peers.items():
                self._open_peer(alias, ep)
        except BaseException:
            self._close_sockets()
            raise
        self._proto.tick()
        self._flush()
        self._setup()
        if service is not None:
            try:
                # The fabric's thread nudges the runner on every change; the runner applies it between calls.
                self._members = Members(fabric, service, on_change=self._nudge)
                self._apply_members()
                self._flush()
            except BaseException:
                self.close()
                raise

    def _setup(self) -> None:
        """The runner's own state, made at the end of ``__init__``."""

    def _nudge(self) -> None:
        """The service's membership changed (called in the fabric's thread): wake the runner if it waits."""

    def _adopt(self, alias: bytes) -> None:
        """The runner starts reading ``alias``'s new socket."""

    def _forget(self, alias: bytes) -> None:
        """The runner stops reading ``alias``'s socket, which is then closed."""

    # ------------------------------------------------------------- membership
    def _open_peer(self, alias: bytes, endpoint: str) -> None:
        self._socks[alias] = make_socket("dealer", self._dealer_options)
        self._watches[alias] = HandshakeWatch(self._socks[alias])
        connect(self._socks[alias], endpoint)

    def _close_peer(self, alias: bytes) -> None:
        watch = self._watches.pop(alias, None)
        if watch is not None:
            watch.close()  # before its socket (see HandshakeWatch.close)
        sock = self._socks.pop(alias, None)
        if sock is not None:
            sock.close(linger=0)

    def _apply_members(self) -> None:
        """Make the server set what the service's membership says: connect the new instances (each gets a hello
        and requests once ready), drain the ones in maintenance, drop the gone (what they held goes elsewhere)."""
        members = self._members
        if members is None or self.closed:
            return
        version, status = members.current()
        self._applied = version
        proto = self._proto
        known = {peer.endpoint: alias for alias, peer in proto.peers.items()}
        for endpoint, gone in known.items():
            if endpoint not in status:
                self._forget(gone)
                proto.remove_peer(gone)
                self._close_peer(gone)
        for endpoint, state in status.items():
            alias = known.get(endpoint)
            if state != "up":
                if alias is not None:
                    proto.drain_peer(alias)
                continue
            if alias is None:
                alias = _alias(endpoint, next(self._aliases))
                try:
                    self._open_peer(alias, endpoint)
                except ConfigurationError as exc:  # a bad endpoint announced by someone else: not ours to raise
                    log.warning("service %r: cannot connect to %r: %s", self.service, endpoint, exc)
                    self._close_peer(alias)
                    continue
                self._adopt(alias)
            proto.add_peer(alias, endpoint)
        self.endpoints = [peer.endpoint for peer in proto.peers.values()]
        proto.tick()  # hellos to the new ones, in the outbox for the runner's next flush

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

    def _where(self) -> str:
        """The servers, for messages: their endpoints, or the service they are found by."""
        return f"service {self.service!r}" if self.service is not None else ", ".join(self.endpoints)

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} for {self._where()} is closed: make a new one")

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
            if self._members is not None and not self._proto.peers:
                refused = self._members.refusal()  # the fabric refused us: that is why no server is known
                if refused is not None:
                    refused.__cause__ = error
                    return refused
                where = ", ".join(self._members.endpoints)
                return Unavailable(f"no instance of {self.service!r} announced on the fabric ({where}) in time")
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
        members = self._members
        if members is not None and members.version != self._applied:  # the one look at membership per call
            self._apply_members()
        limit = self.timeout if timeout is DEFAULT else check_timeout(timeout)
        codec_id, payload = self._codec.pack(body)
        # No look at the socket first: news (a goodbye) read later costs at most a refusal and a resend.
        return self._proto.submit(codec_id, payload, limit)

    def close(self) -> None:
        """Close the sockets (the runners add their own state); idempotent."""
        if not self.closed:
            self._close_sockets()

    def _close_sockets(self) -> None:
        self.closed = True
        members, self._members = self._members, None
        if members is not None:
            members.close()
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
        announce: str | None = None,
        fabric: FabricLike = None,
        advertise: str | Sequence[str] | None = None,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``concurrency``: handlers at once. ``max_queue`` bounds what the server holds (more is refused, and
        clients go elsewhere). At least ``idempotency_window`` recent request ids are remembered with their
        replies (up to twice as many), so a retry is not run twice. ``connect=`` endpoints are connected to
        (e.g. a Proxy's backend) besides binding ``endpoints``.

        ``announce``: a service name announced on the ``fabric`` (addresses, a Fabric, or None:
        ``$ZMQKIT_FABRIC``) once bound: up while serving, maintenance on leave or close, down when gone. A bind
        to ``tcp://*:P`` is announced as this host's address towards the fabric; ``advertise`` overrides it."""
        if not callable(handler):
            raise ConfigurationError(f"bad handler {handler!r}: expected a callable taking the request body")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"bad concurrency={concurrency!r}: expected a positive integer")
        self._binds = parse_endpoints(endpoints, for_bind=True) if endpoints else []
        self._connects = parse_endpoints(connect) if connect else []
        if not self._binds and not self._connects:
            raise ConfigurationError(f"bad endpoints {endpoints!r}: give endpoints to bind or connect=")
        if announce is not None:
            check_announcement(announce, "", "up", None)
            if not self._binds and advertise is None:
                raise ConfigurationError(f"cannot announce {announce!r} without endpoints to bind (or advertise=)")
            if not isinstance(fabric, Fabric):
                fabric_endpoints(fabric)  # no fabric at all: say so now, not at start
        self._announce = (announce, fabric, advertise)
        self._announcer: Announcer | None = None
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

    @property
    def announced(self) -> list[str]:
        """The endpoints announced on the fabric (this host's address for a bind to ``*``); [] when none."""
        return list(self._announcer.endpoints) if self._announcer is not None else []

    def _announce_up(self) -> None:
        """Announce the service at the bound endpoints (at start, once they are known)."""
        service, fabric, advertise = self._announce
        if service is not None and self._announcer is None:
            self._announcer = Announcer(fabric, service, self.endpoints, meta={"kind": "reqrep"}, advertise=advertise)

    def _announce_leaving(self) -> None:
        """Announce maintenance (clients send nothing new) before a leave or close drains or drops the work."""
        if self._announcer is not None:
            with contextlib.suppress(Closed):  # the fabric was closed first: there is no one left to tell
                self._announcer.maintenance()

    def _announce_down(self) -> None:
        """Announce down once the server is gone, and let go of the fabric; idempotent."""
        announcer, self._announcer = self._announcer, None
        if announcer is not None:
            announcer.close()

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
