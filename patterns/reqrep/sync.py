"""Request-reply runners that block: Client (a DEALER per server), Server (ROUTER + handler threads), Proxy.

The logic lives in :mod:`.protocol`, what both runners share in :mod:`.core`; these classes only wait and move
frames.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import deque

import zmq

from zmqkit.checks import DEFAULT, Default, check_timeout, to_ms
from zmqkit.endpoints import parse_endpoints
from zmqkit.errors import Closed, RequestTimeout
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
    set_recv_timeout,
)

from .._background import Background, ProxyCounters
from .core import ClientCore, ServerCore, Value, recv_routed
from .protocol import HEADER, Job, Outcome

__all__ = ["Client", "Server", "Proxy", "nudge_frame", "nudge_until_stopped"]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
POLLIN = int(zmq.POLLIN)
_WAIT_MAX = 3600.0  # seconds: the longest single wait handed to libzmq (a wait with no limit wakes once an hour)


def _wait_ms(seconds: float) -> int:
    return to_ms(min(_WAIT_MAX, seconds))


def _floor_pow2(ms: int) -> int:
    """``ms`` rounded down to a power of two: a receive timeout that seldom needs setting again (setting one
    costs as much as a receive; waking early costs only another turn of the wait loop)."""
    return 1 << (ms.bit_length() - 1) if ms > 0 else 0


def nudge_frame() -> bytes:
    """A frame that tells a socket thread "look at your commands": the nudge kind and 16 random bytes."""
    return HEADER + b"X" + os.urandom(16)


def nudge_until_stopped(background: Background, role: str, endpoint: str, command: bytes, timeout: float) -> bool:
    """Send ``command`` to a background thread's inproc socket until the thread ends; False on timeout.

    The sending socket is this caller's own (sockets are not shared between threads) and stays open until the
    thread has ended: closing an inproc peer right after a send can drop the message.
    """
    sock = make_socket(role, SocketOptions(linger_ms=0, immediate=False))
    try:
        connect(sock, endpoint)
        deadline = time.monotonic() + timeout
        while background.alive and time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):  # its queue is full of earlier nudges: it will see one
                sock.send(command, NOBLOCK)
            background.join(0.1)
    finally:
        sock.close()
    return not background.alive


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

    def _setup(self) -> None:
        self._recv_s = dict.fromkeys(self._socks, 0.0)  # each socket's receive timeout (seconds) as last set
        self._sweep_at = 0.0
        self._poller = zmq.Poller()
        for sock in self._socks.values():
            self._poller.register(sock, POLLIN)
        self._alias_of = {sock: alias for alias, sock in self._socks.items()}
        # Found by service: the fabric's thread writes a byte here on each membership change, which wakes a call
        # that waits in a sweep (for an instance to appear, say). A socket pair, not a zmq socket: any thread
        # may write to it.
        self._wake: tuple[socket.socket, socket.socket] | None = None
        if self.service is not None:
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
            self._poller.register(self._wake[0], POLLIN)

    def _nudge(self) -> None:
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                wake[1].send(b"!")

    def _adopt(self, alias: bytes) -> None:
        sock = self._socks[alias]
        self._recv_s[alias] = 0.0
        self._poller.register(sock, POLLIN)
        self._alias_of[sock] = alias

    def _forget(self, alias: bytes) -> None:
        sock = self._socks[alias]
        self._poller.unregister(sock)
        del self._alias_of[sock]
        del self._recv_s[alias]

    def request(self, body: Value, timeout: float | Default | None = DEFAULT) -> Value:
        """Send ``body`` and return the reply; raise RequestTimeout, RemoteError or Unavailable.

        ``timeout``: seconds for the whole call, retries included; DEFAULT is the client's ``timeout``, None
        no limit. Interrupted (Ctrl-C), the call is forgotten; a server that has the request still runs it.
        """
        rid = self._submit(body, timeout)
        try:
            self._flush()
            outcome = self._outcome(rid)
        except BaseException:  # interrupted: forget it, its late reply will be ignored
            self._proto.cancel(rid)
            raise
        if outcome[0]:
            return outcome[1]
        raise self._explain(outcome[1])

    def wait_ready(self, timeout: float | None = 5.0) -> list[str]:
        """Wait until a server has said it is ready (or ``timeout``; None: no limit); the endpoints that are.

        An empty list means none answered in time; requests made now would wait for one.
        """
        end = self._ready_by(timeout)
        proto = self._proto
        while not (ready := self._ready()):
            now = proto.clock()
            if now >= end:
                break
            deadline = proto.next_deadline()
            if deadline <= now:
                proto.tick()
            else:
                self._sweep(_wait_ms(min(deadline, end) - now))
            if proto.outbox:
                self._flush()
        return ready

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
            self._sweep(0 if peer is not None else _wait_ms(deadline - now))
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
            wait_ms = _floor_pow2(_wait_ms(left))
            set_recv_timeout(sock, wait_ms)
            self._recv_s[alias] = wait_ms / 1000
        try:
            return recv_frame(sock)
        except zmq.Again:
            return None

    def _sweep(self, wait_ms: int) -> None:
        """Read every server's socket, waiting up to ``wait_ms`` for something to arrive on one."""
        self._sweep_at = self._proto.clock() + self.SWEEP_INTERVAL
        woken = False
        for sock, _events in self._poller.poll(wait_ms):
            alias = self._alias_of.get(sock)
            if alias is not None:
                self._drain(alias)
            else:
                woken = True
        if woken and self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[0].recv(4096)
            self._apply_members()
            if self._proto.outbox:
                self._flush()

    def close(self) -> None:
        """Close the sockets at once; calls after raise Closed. Idempotent."""
        if not self.closed:
            self._close_sockets()
            wake, self._wake = self._wake, None
            if wake is not None:
                for end in wake:
                    end.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Server(ServerCore):
    """Answer requests with ``handler(body) -> reply`` on a ROUTER, in a background thread.

    >>> with Server("tcp://*:5555", lambda body: body.upper(), concurrency=4) as server:
    ...     print(server.endpoints)     # the real endpoints (port 0 picks a free one)
    ...     server.leave(timeout=10)    # goodbye to clients, finish what is held, close

    ``concurrency=1`` runs the handler in the socket thread (lowest latency); more runs it on that many threads.
    """

    def _setup(self) -> None:
        # The socket thread waits in a single blocking recv on its ROUTER (a poll over a second socket costs
        # about a tenth of a round trip). Commands and "results ready" therefore reach it through that ROUTER:
        # an inproc peer sends this nudge, a frame no remote peer can forge (16 random bytes).
        self._wake_ep = f"inproc://zmqkit-reqrep-server-{next(_ids)}"
        self._nudge = nudge_frame()
        self._commands: deque[tuple[str, float]] = deque()
        self._results: deque[tuple[Job, tuple[int, int, bytes]]] = deque()
        self._background: Background | None = None

    # --------------------------------------------------------------- lifecycle
    def start(self) -> Server:
        """Bind (errors raise here) and serve in a background thread; Closed after close or leave."""
        if self._closed:
            raise self._closed_error()
        if self._background is None:
            router = make_socket("router", self._options)
            self._open(router)
            try:
                bind(router, self._wake_ep)  # for nudges from this process only; not one of the endpoints
                self._announce_up()
            except BaseException:
                router.close(linger=0)
                raise
            self._background = Background(
                "server", {}, run=lambda _control: self._serve(router), owned=(router,), linger_ms=router.linger
            )
        return self

    def leave(self, timeout: float = 10.0) -> bool:
        """Leave gracefully: say goodbye, refuse new work, finish what is held, then close (at most ``timeout``).

        True if everything held was answered; False if ``timeout`` cut it short.
        """
        self._stop("leave", check_timeout(timeout) or 10.0)
        return self._left_cleanly

    def close(self, timeout: float = 10.0) -> None:
        """Stop now (the thread closes the socket within ``timeout``): requests held are dropped, and their
        clients retry elsewhere. Idempotent."""
        self._stop("close", check_timeout(timeout) or 10.0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout``); True if it has."""
        if self._background is None:
            return True
        self._background.join(timeout)
        return not self._background.alive

    def _stop(self, command: str, timeout: float) -> None:
        self._closed = True
        background = self._background
        if background is None:
            return
        self._announce_leaving()
        try:
            if background.alive:
                self._commands.append((command, timeout))
                if not nudge_until_stopped(background, "dealer", self._wake_ep, self._nudge, timeout + 5.0):
                    raise RequestTimeout(f"server on {self.endpoints!r} did not stop within {timeout}s")
            background.stop(0)  # the thread has ended: this closes our end of its command pair
        finally:
            self._announce_down()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- the thread
    def _serve(self, router: zmq.Socket) -> None:
        jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        workers: list[threading.Thread] = []
        try:
            for _ in range(self.concurrency if self.concurrency > 1 else 0):
                workers.append(threading.Thread(target=self._work, args=(jobs,), name="zmqkit-handler", daemon=True))
                workers[-1].start()
            self._loop(router, jobs if workers else None)
        finally:
            for _ in workers:
                jobs.put(None)
            for worker in workers:
                worker.join(5.0)

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
        leave_by: float | None = None

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
                wait = _wait_ms((leave_by if now >= settled else min(leave_by, settled)) - now)
                frames = recv_routed(router, NOBLOCK) if router.poll(wait, POLLIN) else None
            if frames is not None:
                if take(frames):
                    return
                if proto.outbox:
                    self._flush(router)
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
        self._closed = False
        self._refusals = Refusals()
        self._proxy = ProxyCounters()
        self.frontend = ""
        self.backend = ""

    def start(self) -> Proxy:
        """Bind both sides (errors raise here) and start relaying in a background thread."""
        if self._closed:
            raise Closed(f"Proxy on {self._front_ep + self._back_ep} is closed: make a new one")
        if self._background is not None:
            return self
        front = make_socket("router", self._options)
        back = make_socket("dealer", self._options)
        try:
            self._refusals.watch(front)
            self._refusals.watch(back)
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

    def stats(self) -> dict[str, int]:
        """libzmq's counts, read from any thread: ``request_frames``/``request_bytes`` (clients to servers) and
        ``reply_frames``/``reply_bytes`` (back), in frames as libzmq counts them (a zmqkit request is two: the
        client's routing id and the message); ``auth_failures``. Requests as such are not counted."""
        front_in, front_bytes, _, _, back_in, back_bytes, _, _ = self._proxy.read(self._background)
        return {
            "request_frames": front_in,
            "request_bytes": front_bytes,
            "reply_frames": back_in,
            "reply_bytes": back_bytes,
            "auth_failures": self._refusals.count,
        }

    def join(self, timeout: float | None = None) -> None:
        """Block until the proxy stops (``close()`` from another thread, or Ctrl-C)."""
        if self._background is not None:
            self._background.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop relaying; the thread closes both sides. Idempotent."""
        self._closed = True
        if self._background is not None:
            self._background.stop(timeout)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
