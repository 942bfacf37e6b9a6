"""The pipeline's runner logic, written once: arguments, sockets, sending, the producer's I/O loop, a worker
lane's loop and its stop rule.

Each piece of logic that waits or does I/O is a generator that yields an action (actions.py) and gets its
outcome back; the blocking runner (``sync.py``) and the asyncio runner (``aio.py``) only perform
those actions. The frames and state machines themselves are in ``protocol.py``.
"""

from __future__ import annotations

import contextlib
import logging
import random as _random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq

from zmqkit.checks import check_int, check_number, check_timeout, to_ms
from zmqkit.codecs import AutoCodec, Codec, PickleCodec, get_codec, unpack
from zmqkit.errors import Closed, ConfigurationError, ProtocolError, RequestTimeout, Unavailable
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, attach, make_socket, resolve_options
from zmqkit.sockets import bind as _bind  # the constructors' bind=/connect= arguments shadow these names
from zmqkit.sockets import connect as _connect

from .._follow import Following, announcer, following
from ..presence.fabric import Announcer, FabricLike
from .actions import NOTIFY, WAKE, Poll, Recv, Run, Send, Steps, Wait, Writable
from .protocol import (
    PICKLE_REFUSED,
    Backoff,
    DeadLetter,
    ProducerProtocol,
    Refused,
    Result,
    Retry,
    Task,
    WorkerProtocol,
    decode_message,
    decode_result,
    encode_message,
    encode_result,
)
from .spool import Spool

__all__ = [
    "DRAIN",
    "MALFORMED",
    "Lane",
    "ProducerCore",
    "SinkCore",
    "WorkerCore",
]

log = logging.getLogger(__name__)
DRAIN = 256  # messages taken from a socket per wake-up before other work gets a turn
MALFORMED = object()  # what decoding a malformed fire-and-forget frame gives
POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)


def endpoints_of(bind: str | Sequence[str] | None, connect: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The bind and connect lists of a constructor's ``bind=``/``connect=``; at least one endpoint."""
    binds = [bind] if isinstance(bind, str) else list(bind or [])
    connects = [connect] if isinstance(connect, str) else list(connect or [])
    if not binds and not connects:
        raise ConfigurationError("give bind=ENDPOINT or connect=ENDPOINT(S), e.g. bind='tcp://127.0.0.1:5555'")
    return binds, connects


# -- producer -----------------------------------------------------------------------------------------------


class ProducerCore:
    """Everything a producer does, for the blocking and asyncio runners: arguments, sockets, protocol,
    sending, the I/O loop, waiting for results and for the queue to empty."""

    _ASYNC = False

    def __init__(
        self,
        bind: str | Sequence[str] | None = None,
        connect: str | Sequence[str] | None = None,
        *,
        acks: bool = True,
        codec: str | Codec = "auto",
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        worker_timeout: float = 5.0,
        max_queued: int = 10_000,
        on_full: str = "block",
        batch: int = 256,
        max_dead_letters: int = 10_000,
        spool: str | None = None,
        allow_pickle: bool = False,
        announce: str | None = None,
        advertise: str | None = None,
        fabric: FabricLike = None,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """``batch``: messages per TASK frame at most (never more than the worker's credit);
        ``max_dead_letters``: kept in memory without a spool (with one they stay on disk only);
        ``announce``: a service name workers find on the ``fabric`` (the bound endpoints, or ``advertise``)."""
        binds, connects = endpoints_of(bind, connect)
        self._announcer: Announcer | None = None
        if on_full not in ("block", "raise"):
            raise ConfigurationError(f"bad on_full {on_full!r}: expected 'block' or 'raise'")
        if spool is not None and not acks:
            raise ConfigurationError(f"spool={spool!r} needs acks=True: without acks nothing says a message is done")
        self.acks = acks
        self.on_full = on_full
        self.allow_pickle = allow_pickle
        self._codec = get_codec(codec)
        # The producer decodes its own payloads (leftovers, dead letters), but a spool file may have been
        # written by anyone: pickle only when the user opted in, by allow_pickle or by choosing a pickle codec.
        fallback = getattr(self._codec, "fallback", None) if isinstance(self._codec, AutoCodec) else None
        self._unpickle = allow_pickle or isinstance(self._codec, PickleCodec) or isinstance(fallback, PickleCodec)
        self._closed = False
        self._lock = threading.Lock()  # guards the protocol (the blocking runner's threads share it)
        self._spool = Spool(spool) if spool is not None else None
        self.protocol: ProducerProtocol | None = None
        if acks:
            self.protocol = ProducerProtocol(
                max_attempts=max_attempts,
                backoff=backoff,
                worker_timeout=worker_timeout,
                max_queued=max_queued,
                batch=batch,
                max_dead_letters=max_dead_letters,
                spool=self._spool,
                allow_pickle=allow_pickle,
                clock=clock,
                random=random,
            )
        opts = resolve_options(options, curve)
        self._sock = make_socket("router" if acks else "push", opts, asyncio=self._ASYNC)
        self._refusals = Refusals()
        self._refusals.watch(self._sock)
        self.endpoints = attach(self._sock, binds, connects)
        self._wake_rx = self._wake_tx = None
        if acks:
            # The I/O loop sleeps in poll(); a byte on this inproc pair wakes it when work is accepted.
            name = f"inproc://zmqkit-pipeline-wake-{uuid.uuid4().hex}"
            self._wake_rx = make_socket("pair", asyncio=self._ASYNC)
            _bind(self._wake_rx, name)
            self._wake_tx = make_socket("pair", asyncio=self._ASYNC)
            _connect(self._wake_tx, name)
        self._woken = False
        self._raw_bytes = self._codec.name in ("bytes", "auto")  # these codecs send bytes as they are (id 0)
        self._setup()
        try:  # last: workers that find it are served at once
            meta = {"kind": "pipeline", "acks": acks}
            self._announcer = announcer("Producer", announce, fabric, self.endpoints[: len(binds)], advertise, meta)
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        """The runner's own state (threads, tasks), made at the end of ``__init__``."""

    @property
    def endpoint(self) -> str:
        """The first real endpoint (the port chosen when binding port 0)."""
        return self.endpoints[0]

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} on {self.endpoint} is closed")

    def _proto(self) -> ProducerProtocol:
        if self.protocol is None:
            raise ConfigurationError("this needs acks=True: a fire-and-forget producer keeps no state")
        return self.protocol

    # -- sending

    def _pack(self, obj: Any) -> tuple[int, bytes]:
        """``obj`` as (codec id, payload); bytes go as they are with the ``bytes`` and ``auto`` codecs."""
        return (0, obj) if self._raw_bytes and type(obj) is bytes else self._codec.pack(obj)

    def _accept(self, codec: int, payload: bytes) -> int | None:
        """Accept one packed message if the queue has room and return its id; None when the sender must wait
        for room (:meth:`_room`). Raises Closed, or Unavailable when full with ``on_full="raise"``. The runner
        holds the lock."""
        proto = self.protocol
        if self._closed or proto is None:
            raise self._closed_error()
        if proto.queued < proto.max_queued:
            return proto.accept(codec, payload)
        if self.on_full == "raise":
            raise Unavailable(
                f"pipeline queue full ({proto.max_queued} waiting) on {self.endpoint}: start workers or send later"
            )
        return None

    def _room(self) -> bool:
        """What a sender refused by :meth:`_accept` waits for."""
        return self._closed or not self._proto().full()

    def _still_full(self, timeout: float | None) -> RequestTimeout:
        return RequestTimeout(f"pipeline queue still full after {timeout}s on {self.endpoint}")

    def _wake_wanted(self) -> bool:
        """After accepting: whether the I/O loop must be woken (workers wait for work; else it dispatches
        when acks return credit). The runner holds the lock."""
        if self._woken or not self.protocol or not self.protocol.hungry:
            return False
        self._woken = True
        return True

    def _push_many(self, objs: Iterable[Any], timeout: float | None) -> Steps[list[int]]:
        """Send every one of ``objs`` fire-and-forget (waiting for room, or refusing, as ``on_full`` says)."""
        if self._closed:
            raise self._closed_error()
        count = 0
        for obj in objs:
            yield from self._push(encode_message(*self._codec.pack(obj)), timeout)
            count += 1
        return [0] * count

    def _push(self, frame: bytes, timeout: float | None) -> Steps[None]:
        """Send one fire-and-forget frame: wait for a worker to take it, or refuse, as ``on_full`` says."""
        if timeout is None and self.on_full == "block":
            yield Send(self._sock, [frame], True)  # wait inside libzmq: no wake-up per message while full
            return
        if (yield Send(self._sock, [frame])):
            return
        if self.on_full == "raise":
            raise Unavailable(f"no worker is taking messages from {self.endpoint} (queue full)")
        if not (yield Writable(self._sock, timeout)):
            raise RequestTimeout(f"no worker took the message within {timeout}s on {self.endpoint}")
        yield Send(self._sock, [frame])

    # -- the I/O loop (acknowledged mode)

    def _io(self) -> Steps[None]:
        """Move frames between the ROUTER and the protocol until closed."""
        proto, sock, wake = self._proto(), self._sock, self._wake_rx
        items = [(sock, POLLIN), (wake, POLLIN)]
        while not self._closed:
            timer = proto.next_timer()
            ready = dict((yield Poll(items, 100 if timer is None else min(100, to_ms(timer)))))
            if wake in ready:
                yield Recv(wake)
            batch: list[list[bytes]] = (yield Recv(sock)) if sock in ready else []
            self._woken = False
            for frames in batch:
                for out in proto.handle(frames):
                    yield from self._to_worker(proto, out)
            proto.tick()
            for out in proto.dispatch():
                yield from self._to_worker(proto, out)
            yield NOTIFY

    def _to_worker(self, proto: ProducerProtocol, frames: list[bytes]) -> Steps[None]:
        if not (yield Send(self._sock, frames)):  # the worker left (ROUTER_MANDATORY) or is not reading
            log.info("worker %r unreachable: its messages go to others", frames[0])
            proto.lose(frames[0])

    # -- waiting

    def _join(self, timeout: float | None) -> Steps[None]:
        """Wait until every accepted message is acknowledged or dead."""
        timeout = check_timeout(timeout, allow_zero=True)
        proto = self._proto()
        if self._closed:
            raise self._closed_error()
        if not (yield Wait(lambda: proto.idle() or self._closed, timeout)):
            raise RequestTimeout(
                f"{len(proto.messages)} message(s) still unfinished after {timeout}s on {self.endpoint}"
            )
        if not proto.idle():
            raise self._closed_error()

    def _next_result(self, timeout: float | None) -> Steps[Result | None]:
        """The next result, or None when none came for ``timeout`` seconds (or the producer closed)."""
        proto = self._proto()
        if not (yield Wait(lambda: proto.results or self._closed, timeout)) or not proto.results:
            return None
        return proto.results.popleft()

    def _resubmit(self, msg_id: int) -> Steps[None]:
        if self._closed:
            raise self._closed_error()
        self._proto().resubmit(msg_id)
        if not self._woken:
            self._woken = True
            yield WAKE

    # -- inspection (no I/O)

    def stats(self) -> dict[str, int]:
        """Counters: sent, delivered, acked, in_flight, queued, retrying, retried, redelivered, dead, duplicates,
        auth_failures (refused CURVE handshakes; the only one without acks)."""
        if self.protocol is None:
            return {"auth_failures": self._refusals.count}
        with self._lock:
            return {**self.protocol.stats(), "auth_failures": self._refusals.count}

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """A page of the messages that failed ``max_attempts`` times, oldest first, with their last error:
        ``limit`` of them after the first ``offset``. A value the producer may not decode (pickle without
        ``allow_pickle``) comes as a :class:`Refused` holding the raw bytes."""
        proto = self._proto()
        if proto.spool is not None:
            rows = proto.dead_page(offset, limit)  # the spool has its own lock
        else:
            with self._lock:
                rows = proto.dead_page(offset, limit)
        letters = []  # decoded outside the lock
        for msg_id, codec, payload, attempts, error in rows:
            value = self._decode(codec, payload)
            if isinstance(value, Refused):
                error = f"{error}; {value.reason}"
            letters.append(DeadLetter(msg_id, value, attempts, error))
        return letters

    def _decode(self, codec: int, payload: bytes) -> Any:
        """One of our own payloads (from memory or the spool); a pickle we may not load becomes a Refused."""
        if codec == PickleCodec.id and not self._unpickle:
            return Refused(codec, payload, PICKLE_REFUSED)
        try:
            return unpack(codec, payload, allow_pickle=self._unpickle)
        except ProtocolError as exc:
            return Refused(codec, payload, str(exc))

    # -- closing

    def close(self) -> list[tuple[int, Any]]:
        raise NotImplementedError

    def _leaving(self) -> None:
        """An announced producer is going: workers keep draining it, and it says so before it stops."""
        if self._announcer is not None:
            self._announcer.maintenance()

    def _shut(self) -> list[tuple[int, Any]]:
        """Close the sockets (the I/O loop has stopped), announce down; return what was not acknowledged."""
        left = []
        if self.protocol is not None:
            left = [(i, self._decode(c, p)) for i, c, p in self.protocol.unfinished()]
        if left:
            where = f"kept in spool {self._spool.path!r}" if self._spool else "not delivered"
            log.warning("producer closed with %d unfinished message(s), %s", len(left), where)
            refused = [i for i, value in left if isinstance(value, Refused)]
            if refused:
                log.warning(
                    "%d unfinished message(s) not decoded (ids %s...): %s", len(refused), refused[:10], PICKLE_REFUSED
                )
        for sock in (self._wake_rx, self._wake_tx):
            if sock is not None:
                sock.close(linger=0)
        # Fire-and-forget: what send() accepted is still in the pipe, so linger lets it go out (bounded).
        # Acked: the spool or the caller's leftovers list holds what was not done.
        self._sock.close(linger=None if self.protocol is None else 0)
        if self._spool is not None:
            self._spool.close()
        if self._announcer is not None:
            self._announcer.close()
        return left


# -- worker -------------------------------------------------------------------------------------------------


class Lane:
    """One handler loop's sockets (a DEALER per producer endpoint, or one PULL), their protocols, its sink
    and its counters. The lock lets a heartbeat thread send on these sockets while a handler runs (libzmq
    allows a socket to move between threads behind a full memory barrier, which the lock gives).

    With ``following`` (a worker made with ``service=``), the DEALERs come and go with the service's
    producers: ``attached`` maps each producer endpoint to its socket, ``leaving`` holds the gone ones
    until nothing taken from them is left unfinished."""

    def __init__(self, socks: list[Any], credit: int, most: int, sink: Any, following: Following | None) -> None:
        self.credit, self.most = credit, most
        self.socks = socks
        self.protos = [WorkerProtocol(credit, most) for _ in socks]
        self.pairs = list(zip(socks, self.protos, strict=True))
        self.sink = sink
        self.following = following
        self.attached: dict[str, Any] = {}
        self.leaving: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.last_hb = 0.0
        self.processed = 0  # written by this lane's loop only
        self.failed = 0

    def add(self, sock: Any) -> WorkerProtocol:
        """Take work from one more producer, through ``sock``."""
        proto = WorkerProtocol(self.credit, self.most)
        # New lists, not appends: the heartbeat thread may be iterating the old ones.
        self.socks, self.protos = [*self.socks, sock], [*self.protos, proto]
        self.pairs = list(zip(self.socks, self.protos, strict=True))
        return proto

    def remove(self, sock: Any) -> None:
        """Stop using ``sock`` (the caller closes it)."""
        keep = [i for i, s in enumerate(self.socks) if s is not sock]
        self.socks, self.protos = [self.socks[i] for i in keep], [self.protos[i] for i in keep]
        self.pairs = list(zip(self.socks, self.protos, strict=True))

    def finished(self) -> bool:
        """Stopping may end: every producer said nothing more will come, and every task in hand is done and
        its outcome sent."""
        return all(p.finished for p in self.protos)


class WorkerCore:
    """Everything a worker does, for the blocking and asyncio runners: arguments, sockets, the lane loop
    (greeting, heartbeats, graceful stop) and recording outcomes."""

    _ASYNC = False

    def __init__(
        self,
        handler: Callable[[Any], Any],
        connect: str | Sequence[str] | None = None,
        bind: str | Sequence[str] | None = None,
        *,
        acks: bool = True,
        concurrency: int = 1,
        credit: int | None = None,
        sink: str | None = None,
        codec: str | Codec = "auto",
        allow_pickle: bool = False,
        heartbeat: float = 1.0,
        stop_timeout: float = 10.0,
        service: str | None = None,
        fabric: FabricLike = None,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        if not callable(handler):
            raise ConfigurationError(f"bad handler {handler!r}: expected a callable")
        self._check_handler(handler)
        if service is not None and bind:
            raise ConfigurationError(f"Worker: service={service!r} with bind={bind!r}: a worker finds producers")
        binds, connects = endpoints_of(bind, connect) if service is None else ([], [])
        check_int("concurrency", concurrency, 1)
        if binds and concurrency > 1 and not self._ASYNC:
            raise ConfigurationError(f"bind={bind!r} with concurrency={concurrency}: connect workers to the producer")
        # By default a worker asks for 100 messages and lets the producer go up to 1000 while it keeps up (see
        # protocol._Peer): fast handlers are not held back by round trips, slow ones hoard no more than 100.
        # An explicit credit is a fixed bound.
        most = 1000 if credit is None else credit
        credit = check_int("credit", 100 if credit is None else credit, 1)
        self.handler = handler
        self.acks = acks
        self.heartbeat = check_number("heartbeat", heartbeat, 0.0, above=True)
        self.stop_timeout = check_number("stop_timeout", stop_timeout, 0.0)
        self.allow_pickle = allow_pickle
        self._codec = get_codec(codec)
        self._stop = threading.Event()
        self._closed = False
        self._opts = opts = resolve_options(options, curve)
        self.concurrency = concurrency
        self.lanes: list[Lane] = []
        self.endpoints: list[str] = []
        self._following = following("Worker", service, fabric, connect)  # last check, first thing to release
        try:
            for _ in range(1 if self._ASYNC else concurrency):  # asyncio: one lane, handlers as tasks
                if acks:
                    socks = [make_socket("dealer", opts, asyncio=self._ASYNC) for _ in binds + connects]
                    for s, ep in zip(socks, binds + connects, strict=True):
                        self.endpoints += attach(s, [ep] if ep in binds else [], [ep] if ep in connects else [])
                else:
                    socks = [make_socket("pull", opts, asyncio=self._ASYNC)]
                    if self._following is None:
                        self.endpoints += attach(socks[0], binds, connects)
                sink_sock = None
                if sink is not None:
                    sink_sock = make_socket("push", opts, asyncio=self._ASYNC)
                    attach(sink_sock, [], [sink])
                # Each lane applies membership on its own (its own version), from the worker's one Members.
                lane_following = None if self._following is None else Following(self._following.members)
                self.lanes.append(Lane(socks, credit, most, sink_sock, lane_following))
        except BaseException:
            self._close_sockets()
            raise
        self._setup()

    def _check_handler(self, handler: Callable[[Any], Any]) -> None:
        """Refuse a handler this runner cannot call (the blocking runner refuses ``async def``)."""

    def _setup(self) -> None:
        """The runner's own state (threads, tasks), made at the end of ``__init__``."""

    @property
    def endpoint(self) -> str:
        """The first endpoint the worker is attached to now (a worker found by service: a producer's)."""
        if not self.endpoints:  # only a worker that follows a service has none (no producer up now)
            refused = None if self._following is None else self._following.members.refusal()
            raise refused or Unavailable(
                f"{type(self).__name__} for service {self.service!r} is attached to no producer now"
            )
        return self.endpoints[0]

    @property
    def processed(self) -> int:
        """Messages handled since start."""
        return sum(lane.processed for lane in self.lanes)

    @property
    def failed(self) -> int:
        """Handler failures since start."""
        return sum(lane.failed for lane in self.lanes)

    def stats(self) -> dict[str, int]:
        """Messages handled (``processed``) and handler failures (``failed``) since start."""
        return {"processed": self.processed, "failed": self.failed}

    @property
    def service(self) -> str | None:
        """The service this worker takes work from (None: fixed endpoints)."""
        return None if self._following is None else self._following.members.service

    def _closed_error(self) -> Closed:
        where = ", ".join(self.endpoints) if self._following is None else f"service {self.service!r}"
        return Closed(f"{type(self).__name__} of {where} is closed")

    # -- membership (service=): applied between calls, never per message

    def _follow(self, lane: Lane) -> Steps[None]:
        """Connect a DEALER to each producer that joined the service (and greet it); mark gone ones leaving."""
        assert lane.following is not None
        added, gone = lane.following.changes()
        for endpoint in added:
            sock = lane.leaving.pop(endpoint, None)  # back before it was let go: keep its socket
            if sock is None:
                sock = make_socket("dealer", self._opts, asyncio=self._ASYNC)
                attach(sock, [], [endpoint], "Worker")
                lane.attached[endpoint] = sock
                proto = lane.add(sock)
                if not (yield Send(sock, proto.ready())):
                    proto.unreachable()  # not connected yet: greeted once writable
            log.info("worker takes work from %s (service %r)", endpoint, lane.following.members.service)
        for endpoint in gone:
            if endpoint in lane.attached:
                lane.leaving[endpoint] = lane.attached[endpoint]
        self._let_go(lane)

    def _follow_plain(self, lane: Lane) -> None:
        """A PULL lane (``acks=False``): connect to producers that joined, disconnect from gone ones."""
        assert lane.following is not None
        (sock,) = lane.socks
        added, gone = lane.following.changes()
        for endpoint in added:
            _connect(sock, endpoint)
        for endpoint in gone:
            with contextlib.suppress(zmq.ZMQError):  # never connected (a bad address): nothing to undo
                sock.disconnect(endpoint)

    def _let_go(self, lane: Lane) -> None:
        """Close the sockets of gone producers once every task taken from them ran and its outcome was sent."""
        for endpoint, sock in list(lane.leaving.items()):
            proto = lane.protos[lane.socks.index(sock)]
            if proto.held or proto.unflushed:
                continue
            del lane.leaving[endpoint], lane.attached[endpoint]
            lane.remove(sock)
            sock.close(linger=0)
            log.info("worker let go of %s: gone from service %r", endpoint, self.service)

    # -- the acknowledged lane loop

    def _lane(self, lane: Lane) -> Steps[None]:
        """Greet the producers, take tasks, send outcomes, heartbeat; on stop say BYE and finish what is in
        hand, until :meth:`Lane.finished` or ``stop_timeout``."""
        for sock, proto in lane.pairs:
            if not (yield Send(sock, proto.ready())):
                proto.unreachable()  # the producer is not connected yet: greet it once it is
        deadline = None
        following = lane.following
        while True:
            if following is not None and deadline is None:
                if following.members.version != following.version:
                    yield from self._follow(lane)
                elif lane.leaving:
                    self._let_go(lane)
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.stop_timeout
                for sock, proto in lane.pairs:
                    if not (yield Send(sock, proto.bye())):
                        proto.unreachable()  # no producer connected: nothing more can come
            if deadline is not None and (lane.finished() or time.monotonic() > deadline):
                return
            # A producer to greet is watched for POLLOUT: under IMMEDIATE a socket is writable once connected.
            items = [(sock, POLLIN | (POLLOUT if proto.greet else 0)) for sock, proto in lane.pairs]
            for sock, events in (yield Poll(items, 100)):
                proto = lane.protos[lane.socks.index(sock)]
                if events & POLLOUT and proto.greet:
                    yield Send(sock, proto.greeting())
                if events & POLLIN:
                    for frames in (yield Recv(sock)):
                        tasks, replies = proto.feed(frames)
                        if tasks:
                            yield Run(lane, sock, proto, tasks)
                        for out in replies + proto.flush():
                            yield Send(sock, out)
            if time.monotonic() - lane.last_hb >= self.heartbeat:
                yield from self._beat(lane)

    def _beat(self, lane: Lane) -> Steps[None]:
        """Heartbeat every producer of ``lane`` (BYE again while stopping)."""
        for sock, proto in lane.pairs:
            if not (yield Send(sock, proto.heartbeat())):
                proto.unreachable()
        lane.last_hb = time.monotonic()

    # -- outcomes

    def _value(self, task: Task) -> Any:
        return task.payload if task.codec == 0 else unpack(task.codec, task.payload, allow_pickle=self.allow_pickle)

    def _outcome(self, lane: Lane, proto: WorkerProtocol, task: Task, result: Any, exc: BaseException | None) -> None:
        """Record how one task ended (results go to the sink when there is one, else back to the producer)."""
        if exc is not None:
            lane.failed += 1
            if not isinstance(exc, Retry):
                log.warning("handler failed on message %d (attempt %d): %r", task.id, task.attempt, exc)
            proto.failed(task, exc)
            return
        lane.processed += 1
        if result is not None and lane.sink is not None:
            cid, payload = self._codec.pack(result)
            lane.sink.send_multipart(encode_result(task.id, cid, payload))
            result = None
        proto.succeeded(task, result, self._codec)

    def _fire_and_forget(self, frame: bytes) -> Any:
        """Decode one PUSH/PULL frame; return the value, or :data:`MALFORMED` (logged)."""
        try:
            codec, payload = decode_message(frame)
            return unpack(codec, payload, allow_pickle=self.allow_pickle)
        except ProtocolError as exc:
            log.warning("dropped malformed fire-and-forget message: %s", exc)
            return MALFORMED

    def _plain_outcome(self, lane: Lane, result: Any, exc: BaseException | None) -> None:
        """Record how a fire-and-forget message ended; a result goes to the sink when there is one."""
        if exc is not None:
            lane.failed += 1
            log.warning("handler failed on a fire-and-forget message: %r", exc)
            return
        lane.processed += 1
        if result is not None and lane.sink is not None:
            cid, payload = self._codec.pack(result)
            lane.sink.send_multipart(encode_result(0, cid, payload))

    def _close_sockets(self) -> None:
        if self._following is not None:
            self._following.close()
        for lane in self.lanes:
            for sock in [*lane.socks, lane.sink]:
                if sock is not None:
                    sock.close(linger=None if sock is lane.sink else 0)  # results still in the pipe may go out


# -- sink ---------------------------------------------------------------------------------------------------


class SinkCore:
    """A Sink's arguments, socket and decoding, for the blocking and asyncio runners."""

    _ASYNC = False

    def __init__(
        self,
        bind: str | Sequence[str] | None = None,
        connect: str | Sequence[str] | None = None,
        *,
        allow_pickle: bool = False,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        binds, connects = endpoints_of(bind, connect)
        self.allow_pickle = allow_pickle
        self._sock = make_socket("pull", resolve_options(options, curve), asyncio=self._ASYNC)
        self.endpoints = attach(self._sock, binds, connects)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def _wait_ms(self, timeout: float | None) -> int:
        """The poll of ``results(timeout)``; Closed after close."""
        if self._sock.closed:
            raise Closed(f"{type(self).__name__} on {self.endpoint} is closed")
        return to_ms(check_timeout(timeout, allow_zero=True))

    def _decode(self, frames: list[bytes]) -> Result | None:
        try:
            msg_id, codec, payload = decode_result(frames)
            return Result(msg_id, unpack(codec, payload, allow_pickle=self.allow_pickle))
        except ProtocolError as exc:
            log.warning("sink dropped a malformed result: %s", exc)
            return None

    def close(self) -> None:
        """Close at once (idempotent)."""
        self._sock.close(linger=0)
