"""Request-reply runners: Client (a DEALER per server), Server (ROUTER + handler threads), Proxy.

The logic lives in :mod:`.protocol`; these classes only move frames between it and the sockets.

Why the client has a DEALER per server and not one socket for all: a DEALER connected to many servers deals
requests round-robin, blindly, and queues them to peers that died. With a socket per server the client chooses
the server for each request (least loaded, not one that said goodbye, another one on retry); IMMEDIATE makes a
send to a server that is not connected fail at once instead of queueing. And a message is one frame each way:
a ROUTER client (the zguide's Freelance pattern) would add a routing frame to every send and every receive, and
each frame is a call into libzmq that costs more than the bytes it moves.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.backend import zmq_poll

from zmqkit.checks import check_timeout
from zmqkit.codecs import Codec, get_codec
from zmqkit.endpoints import parse_endpoints
from zmqkit.errors import ConfigurationError, RequestTimeout, Unavailable
from zmqkit.handshake import HandshakeWatch, refusal
from zmqkit.security import Curve
from zmqkit.sockets import (
    NOBLOCK,
    SocketOptions,
    bind,
    connect,
    has_input,
    make_socket,
    resolve_options,
    send_frames,
    set_recv_timeout,
)

from .._background import Background
from .protocol import HEADER, ClientProtocol, Job, Outcome, ServerProtocol, run_handler

__all__ = [
    "Client",
    "Server",
    "Proxy",
    "ClientCore",
    "ServerCore",
    "nudge_frame",
    "nudge_until_stopped",
    "recv_routed",
]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
_POLL_MAX_MS = 3_600_000
# Plain ints: pyzmq's enum flags cost microseconds per frame on the hot path.
POLLIN = int(zmq.POLLIN)
_recv = zmq.backend.Socket.recv
_send = zmq.backend.Socket.send
_BURST = 64  # queued requests a server takes before it sends their replies
_MISSES, _SKIP = 4, 32  # after this many empty looks for queued requests, skip that many
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


def _ms(seconds: float) -> int:
    return min(_POLL_MAX_MS, max(0, math.ceil(seconds * 1000)))


def _alias(endpoint: str, index: int) -> bytes:
    raw = endpoint.encode()
    return raw if len(raw) <= 255 else b"server-%d" % index


def _floor_pow2(ms: int) -> int:
    """``ms`` rounded down to a power of two: a receive timeout that seldom needs setting again (setting one
    costs as much as a receive; waking early costs only another turn of the wait loop)."""
    return 1 << (ms.bit_length() - 1) if ms > 0 else 0


def nudge_frame() -> bytes:
    """A frame that tells a socket thread "look at your commands": the nudge kind and 16 random bytes."""
    return HEADER + b"X" + os.urandom(16)


def recv_routed(sock: zmq.Socket, flags: int) -> list[bytes]:
    """One message from a ROUTER: its first frame (the routing id, always followed by more) is read as a copy,
    which is cheaper than a Frame; the rest as Frames, whose ``.more`` is cheaper than asking RCVMORE. Raises
    zmq.Again (with NOBLOCK) from the first frame only: messages arrive whole."""
    parts = [_recv(sock, flags)]
    frame = _recv(sock, flags, False)
    parts.append(frame.bytes)
    while frame.more:
        frame = _recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts


def nudge_until_stopped(thread: threading.Thread, role: str, endpoint: str, command: bytes, timeout: float) -> bool:
    """Send ``command`` to a background thread's inproc socket until the thread ends; False on timeout.

    The sending socket is this caller's own (sockets are not shared between threads) and stays open until the
    thread has ended: closing an inproc peer right after a send can drop the message.
    """
    sock = make_socket(role, SocketOptions(linger_ms=0, immediate=False))
    try:
        connect(sock, endpoint)
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):  # its queue is full of earlier nudges: it will see one
                sock.send(command, NOBLOCK)
            thread.join(0.1)
    finally:
        sock.close()
    return not thread.is_alive()


class _Background:
    """Owns one background thread that makes its own sockets; ``_launch`` returns once they are bound."""

    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def _launch(self, name: str, what: str, timeout: float) -> None:
        if self._thread is not None:
            return
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RequestTimeout(f"{what} did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error

    def _run(self) -> None:
        raise NotImplementedError


class ClientCore:
    """What the sync and asyncio clients share: the protocol, the socket, and moving frames between them."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
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
        eps = parse_endpoints(endpoints)
        self.timeout = check_timeout(timeout) or 5.0
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

    def servers(self) -> dict[str, str]:
        """Each server's endpoint and its state as this client sees it (ready, connecting, leaving, down, suspect)."""
        return {self._proto.peers[alias].endpoint: state for alias, state in self._proto.servers_state().items()}

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
                _send(socks[alias], msg, NOBLOCK)
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
        """Feed every message waiting on ``alias``'s socket to the protocol.

        Reads until the socket says EAGAIN: one failed read costs about two EVENTS checks, and replies come in
        bunches.
        """
        sock = self._socks[alias]
        on_message = self._proto.on_message
        with contextlib.suppress(zmq.Again):
            while True:
                on_message(alias, _recv(sock, NOBLOCK))

    def _submit(self, body: Any, timeout: float | None) -> bytes:
        """Start a request in the protocol; its frames wait in the outbox for the runner's next ``_flush``."""
        if self.closed:
            raise ConfigurationError(f"client for {self.endpoints!r} is closed")
        limit = self.timeout if timeout is None else check_timeout(timeout) or self.timeout
        codec_id, payload = self._codec.pack(body)
        # No look at the socket first: news (a goodbye) read later costs at most a refusal and a resend.
        return self._proto.submit(codec_id, payload, limit)

    def _close_sockets(self) -> None:
        self.closed = True
        for watch in self._watches.values():
            watch.close()
        for sock in self._socks.values():
            sock.close(linger=0)


class Client(ClientCore):
    """Send requests to many servers at once, with timeouts, retries on another server, and failover.

    >>> with Client(["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"], timeout=5.0) as client:
    ...     client.request(b"resize photo 42")

    ``attempt_timeout`` (default: the timeout split over ``retries + 1`` attempts) bounds one try; the request
    is then sent to another server after a backoff. One thread at a time (like a socket); for many requests in
    flight use ``zmqkit.asyncio.Client``.
    """

    # What the other servers say (ready, goodbye) is read at least this often, even while a call waits long.
    SWEEP_INTERVAL = 0.1

    def __init__(self, endpoints: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self._recv_s = dict.fromkeys(self._socks, 0.0)  # each socket's receive timeout (seconds) as last set
        self._sweep_at = 0.0
        self._poll_items = [(sock, POLLIN) for sock in self._socks.values()]
        self._alias_of = {sock: alias for alias, sock in self._socks.items()}

    def request(self, body: Any, timeout: float | None = None) -> Any:
        """Send ``body`` and return the reply; raise RequestTimeout, RemoteError or Unavailable."""
        proto = self._proto
        rid = self._submit(body, timeout)
        try:
            self._flush()
            # The short way while all goes well: the request went out at once, so wait on that server's socket
            # alone; its reply finishes the call without the protocol's pending entry and timer ever being made.
            # What runs between the send and the receive overlaps the round trip; what runs before the send or
            # after the reply adds to it, so that part is kept to the fewest steps.
            outcome = None
            sent = proto.sent_now(rid)
            if sent is not None:
                alias, attempt_deadline = sent
                now = proto.clock()
                sweep_at = self._sweep_at
                if now < sweep_at:
                    msg = self._recv_on(alias, attempt_deadline if attempt_deadline < sweep_at else sweep_at, now)
                    if msg is not None:
                        outcome = proto.quick_reply(rid, msg)
                        if outcome is None:
                            proto.on_message(alias, msg)
            if outcome is None:
                outcome = self._outcome(rid)  # the long way: timers, retries, other servers' news
        except BaseException:  # interrupted (Ctrl-C): forget it, its late reply will be ignored
            proto.cancel(rid)
            raise
        if outcome[0]:
            return outcome[1]
        raise self._explain(outcome[1])

    def _outcome(self, rid: bytes) -> Outcome:
        """Wait until request ``rid`` is done; its outcome."""
        proto = self._proto
        completed = proto.completed
        while True:
            if completed:
                # Others than ``rid`` are left over from calls interrupted after they finished: dropped.
                mine = [outcome for done, outcome in completed if done == rid]
                completed.clear()
                if mine:
                    return mine[0]
            self._wait(rid)
            if proto.outbox:
                self._flush()

    def _wait(self, rid: bytes) -> None:
        """Wait for the next thing that moves request ``rid`` on: a message or the protocol's next timer."""
        proto = self._proto
        now = proto.clock()
        deadline = proto.next_deadline()
        if deadline <= now:
            proto.tick()
            return
        p = proto.pending.get(rid)
        peer = p.peer if p is not None else None
        if peer is None or now >= self._sweep_at:
            self._sweep(0 if peer is not None else _ms(deadline - now))
            return
        # The usual case: wait on the socket of the server that holds the request, bounded by the next timer and
        # the next sweep. A message from it (a goodbye too) is handled in order.
        msg = self._recv_on(peer.alias, min(deadline, self._sweep_at), now)
        if msg is not None:
            proto.on_message(peer.alias, msg)

    def _recv_on(self, alias: bytes, until: float, now: float) -> bytes | None:
        """One message from ``alias``'s socket, waiting until ``until`` at most (or to the next millisecond);
        None if none came.

        The socket's receive timeout is a power of two milliseconds, set again only when it would wait past
        ``until`` or is under a quarter of the time left: setting one costs as much as a receive, and waking
        early costs only another turn of the caller's loop.
        """
        sock = self._socks[alias]
        left = until - now
        set_s = self._recv_s[alias]
        if not 0 < set_s <= left < 4 * set_s:
            wait_ms = _floor_pow2(_ms(left))
            set_recv_timeout(sock, wait_ms)
            self._recv_s[alias] = wait_ms / 1000
        try:
            return _recv(sock)
        except zmq.Again:
            return None

    def _sweep(self, wait_ms: int) -> None:
        """Read every server's socket, waiting up to ``wait_ms`` for something to arrive on one."""
        self._sweep_at = self._proto.clock() + self.SWEEP_INTERVAL
        for sock, _events in zmq_poll(self._poll_items, wait_ms):
            self._drain(self._alias_of[sock])

    def close(self) -> None:
        """Close the sockets; the client cannot be used after."""
        if not self.closed:
            self._close_sockets()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerCore:
    """What the threaded and asyncio servers share: settings, the protocol, running the handler, sending."""

    def __init__(
        self,
        endpoints: str | Sequence[str] | None,
        handler: Callable[[Any], Any],
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
        self._clock = clock
        self.endpoints: list[str] = []
        self._left_cleanly = False

    def stats(self) -> dict[str, int]:
        """Requests executed, duplicates answered from the idempotency window, requests held now."""
        p = self._proto
        return {"executed": p.executed, "duplicates": p.duplicates, "held": p.held}

    def _execute(self, job: Job) -> tuple[int, int, bytes]:
        """Run the handler on one job (overridden by RpcServer)."""
        return run_handler(self.handler, self._codec, self._allow_pickle, job)

    def _open(self, router: zmq.Socket) -> None:
        """Bind and connect the ROUTER; remember the real endpoints."""
        self.endpoints = [bind(router, ep) for ep in self._binds]
        for ep in self._connects:
            connect(router, ep)

    def _flush(self, router: zmq.Socket) -> None:
        proto = self._proto
        for frames in proto.outbox:
            try:
                if len(frames) == 2:  # the usual answer: the client's routing id, the message
                    _send(router, frames[0], _MORE_NOBLOCK)
                    _send(router, frames[1], NOBLOCK)
                else:
                    send_frames(router, frames, NOBLOCK)
            except zmq.ZMQError as exc:
                # The client left (or stopped reading): its reply has nowhere to go.
                log.debug("reply undeliverable (%s) to %r", exc.strerror, frames[0][:64])
                if exc.errno == zmq.EHOSTUNREACH:
                    proto.client_gone(frames[:-1])
        proto.outbox.clear()


class Server(ServerCore, _Background):
    """Answer requests with ``handler(body) -> reply`` on a ROUTER, in a background thread.

    >>> with Server("tcp://*:5555", lambda body: body.upper(), concurrency=4) as server:
    ...     print(server.endpoints)     # the real endpoints (port 0 picks a free one)
    ...     server.leave(timeout=10)    # goodbye to clients, finish what is held, close

    ``concurrency=1`` runs the handler in the socket thread (lowest latency); more runs it on that many threads.
    ``max_queue`` bounds what the server holds (more is refused, and clients go elsewhere).
    At least ``idempotency_window`` recent request ids are remembered with their replies (up to twice as many),
    so a retry is not run twice.
    ``connect=`` endpoints are connected to (e.g. a Proxy's backend) besides binding ``endpoints``.
    """

    def __init__(self, endpoints: str | Sequence[str] | None, handler: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(endpoints, handler, **kwargs)
        # The socket thread waits in a single blocking recv on its ROUTER (a poll over a second socket costs
        # about a tenth of a round trip). Commands and "results ready" therefore reach it through that ROUTER:
        # an inproc peer sends this nudge, a frame no remote peer can forge (16 random bytes).
        self._wake_ep = f"inproc://zmqkit-reqrep-server-{next(_ids)}"
        self._nudge = nudge_frame()
        self._commands: deque[tuple[str, float]] = deque()
        self._results: deque[tuple[Job, tuple[int, int, bytes]]] = deque()

    # --------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> Server:
        """Bind and serve in a background thread; return once bound (raise if binding failed)."""
        self._launch("zmqkit-server", f"server on {self._binds or self._connects!r}", timeout)
        return self

    def leave(self, timeout: float = 10.0) -> bool:
        """Leave gracefully: say goodbye, refuse new work, finish what is held, then close (at most ``timeout``).

        True if everything held was answered; False if ``timeout`` cut it short.
        """
        self._stop("leave", check_timeout(timeout) or 10.0)
        return self._left_cleanly

    def close(self, timeout: float = 10.0) -> None:
        """Stop now: requests held are dropped (their clients retry elsewhere)."""
        self._stop("close", check_timeout(timeout) or 10.0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout``); True if it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _stop(self, command: str, timeout: float) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._commands.append((command, timeout))
        if not nudge_until_stopped(thread, "dealer", self._wake_ep, self._nudge, timeout + 5.0):
            raise RequestTimeout(f"server on {self.endpoints!r} did not stop within {timeout}s")

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- the thread
    def _run(self) -> None:
        router = None
        workers: list[threading.Thread] = []
        jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        try:
            try:
                router = make_socket("router", self._options)
                self._open(router)
                bind(router, self._wake_ep)  # for nudges from this process only; not one of the endpoints
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._started.set()
            for _ in range(self.concurrency if self.concurrency > 1 else 0):
                t = threading.Thread(target=self._work, args=(jobs,), daemon=True)
                t.start()
                workers.append(t)
            self._loop(router, jobs if workers else None)
        except Exception:
            log.exception("request-reply server on %r stopped on an error", self.endpoints)
        finally:
            for _ in workers:
                jobs.put(None)
            for t in workers:
                t.join(5.0)
            if router is not None:
                router.close()

    def _work(self, jobs: queue.SimpleQueue[Job | None]) -> None:
        """A handler thread: run jobs, hand results back to the socket thread, nudge it."""
        nudge = make_socket("dealer", SocketOptions(immediate=False, sndhwm=0))
        try:
            connect(nudge, self._wake_ep)
            while (job := jobs.get()) is not None:
                self._results.append((job, self._execute(job)))
                nudge.send(self._nudge)
        finally:
            nudge.close(linger=0)

    def _loop(self, router: zmq.Socket, jobs: queue.SimpleQueue[Job | None] | None) -> None:
        proto = self._proto
        on_message = proto.on_message
        finish = proto.finish
        execute = self._execute
        nudge = self._nudge
        items = [(router, POLLIN)]
        leave_by: float | None = None
        misses = skip = 0  # burst looks in a row that found nothing queued; looks to skip

        def take(frames: list[bytes]) -> bool:
            """Handle one message: a request (run now, or handed to a handler thread) or a nudge; True: close."""
            nonlocal leave_by
            if len(frames) == 2 and frames[1] == nudge:
                while self._results:
                    done, result = self._results.popleft()
                    finish(done, *result)
                while self._commands:
                    command, timeout_s = self._commands.popleft()
                    if command == "close":
                        return True
                    proto.leave()
                    leave_by = self._clock() + timeout_s
                return False
            job = on_message(frames)
            if job is not None:
                if jobs is None:
                    finish(job, *execute(job))
                else:
                    jobs.put(job)
            return False

        while True:
            if leave_by is None:
                frames: list[bytes] | None = recv_routed(router, 0)  # the thread's one wait
            else:
                # Leaving: wake to re-check when idle clients stop being waited for, and at the deadline.
                now = self._clock()
                settled = proto.left_at + proto.settle
                wait = _ms((leave_by if now >= settled else min(leave_by, settled)) - now)
                frames = recv_routed(router, NOBLOCK) if zmq_poll(items, wait) else None
            if frames is not None:
                if take(frames):
                    return
                if proto.outbox:
                    self._flush(router)
                # A pipelining client leaves more queued: take all of it, then send the replies in one burst,
                # which wakes libzmq's I/O thread once instead of once per reply (measured under pipelined load:
                # its CPU per request fell by about a third). Asked only after the first reply is on its way, so
                # a lone request's round trip does not wait for the question; a question, not a failed read
                # (which costs three times as much), when nothing more is queued. A burst is bounded, so replies
                # are not held back long and a flood cannot keep the leave deadline from being looked at.
                if skip:
                    skip -= 1
                elif has_input(router):  # after replying, and only now and then while nothing queues up
                    misses = 0
                    with contextlib.suppress(zmq.Again):  # messages arrive whole: only a first frame raises it
                        for _ in range(_BURST):
                            if take(recv_routed(router, NOBLOCK)):
                                return
                    if proto.outbox:
                        self._flush(router)
                else:
                    # Clients that wait for each reply never leave a queue: after a few empty looks, look only
                    # now and then, and spare them the question (it costs a few microseconds of CPU each time).
                    misses += 1
                    if misses >= _MISSES:
                        skip = _SKIP
            if leave_by is not None:
                if proto.drained:
                    self._left_cleanly = True
                    return
                if self._clock() >= leave_by:
                    log.warning("server on %r left with %d request(s) unfinished", self.endpoints, proto.held)
                    return


class Proxy:
    """A queue device: clients connect to ``frontend`` (ROUTER), servers to ``backend`` (DEALER); libzmq relays.

    >>> with Proxy("tcp://*:5555", "tcp://*:5556") as proxy:
    ...     Server(None, handler, connect=proxy.backend).start()

    Runs ``zmq.proxy_steerable`` in a background thread (the same runner as the fanout Forwarder).
    """

    def __init__(
        self, frontend: str, backend: str, *, curve: Curve | None = None, options: SocketOptions | None = None
    ) -> None:
        self._front_ep = parse_endpoints(frontend, for_bind=True)
        self._back_ep = parse_endpoints(backend, for_bind=True)
        # A reply to a client that left must be dropped: with ROUTER_MANDATORY libzmq's proxy would stop on it.
        self._options = resolve_options(options, curve, router_mandatory=False)
        self._background: Background | None = None
        self.frontend = ""
        self.backend = ""

    def start(self) -> Proxy:
        """Bind both sides (errors raise here) and start relaying in a background thread."""
        if self._background is not None:
            return self
        front = make_socket("router", self._options)
        back = make_socket("dealer", self._options)
        try:
            self.frontend = ", ".join(bind(front, ep) for ep in self._front_ep)
            self.backend = ", ".join(bind(back, ep) for ep in self._back_ep)
        except BaseException:
            front.close(linger=0)
            back.close(linger=0)
            raise

        def relay(control: zmq.Socket) -> None:
            zmq.proxy_steerable(front, back, None, control)

        self._background = Background("proxy", {}, run=relay, owned=(front, back))
        return self

    def join(self, timeout: float | None = None) -> None:
        """Block until the proxy stops (``close()`` from another thread, or Ctrl-C)."""
        if self._background is not None:
            self._background.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop relaying; the thread closes both sides."""
        if self._background is not None:
            self._background.stop(timeout)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
