"""Pipeline runners (blocking): Producer, Worker and Sink around the sans-I/O protocol in protocol.

Acknowledged mode: the producer's ROUTER hands TASK batches only to workers with credit, a background I/O
thread owns it (callers talk to it through the protocol object under a lock, and wake it over an inproc
PAIR). Fire-and-forget mode (``acks=False``) is plain PUSH/PULL.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random as _random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import zmq

from zmqkit.codecs import AutoCodec, Codec, PickleCodec, get_codec, unpack
from zmqkit.errors import ConfigurationError, ProtocolError, RequestTimeout, Unavailable
from zmqkit.security import Curve
from zmqkit.sockets import NOBLOCK, SocketOptions, attach, make_socket, resolve_options
from zmqkit.sockets import bind as _bind  # the constructors' bind=/connect= arguments shadow these names
from zmqkit.sockets import connect as _connect

from .protocol import (
    HDR,
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

__all__ = ["Producer", "Worker", "Sink", "Retry", "Backoff", "DeadLetter", "Refused", "Result"]

log = logging.getLogger(__name__)
_DRAIN = 256  # messages taken from a socket per wake-up before other work gets a turn
_MALFORMED = object()
_BACKEND_SEND = zmq.backend.Socket.send  # see Producer._bare_send


def _endpoints(bind_: str | Sequence[str] | None, connect_: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    binds = [bind_] if isinstance(bind_, str) else list(bind_ or [])
    connects = [connect_] if isinstance(connect_, str) else list(connect_ or [])
    if not binds and not connects:
        raise ConfigurationError("give bind=ENDPOINT or connect=ENDPOINT(S), e.g. bind='tcp://127.0.0.1:5555'")
    return binds, connects


def _send(sock: Any, frames: list[bytes]) -> bool:
    """Send without blocking; False when the peer is not there (IMMEDIATE) or not reading."""
    try:
        sock.send_multipart(frames, NOBLOCK)
        return True
    except zmq.Again:
        return False


def _recv_ready(sock: Any, into: list[list[bytes]]) -> list[list[bytes]]:
    """Receive up to _DRAIN queued messages from a socket that polled readable; return ``into``.

    Asks the socket whether more is queued instead of reading until zmq.Again: raising Again costs more
    than a message.
    """
    for _ in range(_DRAIN):
        into.append(sock.recv_multipart(NOBLOCK))
        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            break
    return into


def _ms(timeout: float | None) -> int:
    return -1 if timeout is None else max(0, int(timeout * 1000))


class _ProducerBase:
    """Everything the blocking and asyncio producers share: arguments, sockets, protocol, inspection."""

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
        batch: int = 256,  # messages per TASK frame at most (never more than the worker's credit)
        max_dead_letters: int = 10_000,  # kept in memory without a spool; with one they stay on disk only
        spool: str | None = None,
        allow_pickle: bool = False,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        binds, connects = _endpoints(bind, connect)
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
        self._bare_bytes = on_full == "block" and self._raw_bytes

    @property
    def endpoint(self) -> str:
        """The first real endpoint (the port chosen when binding port 0)."""
        return self.endpoints[0]

    def _proto(self) -> ProducerProtocol:
        if self.protocol is None:
            raise ConfigurationError("this needs acks=True: a fire-and-forget producer keeps no state")
        return self.protocol

    def _pump(self, batch: list[list[bytes]]) -> list[list[bytes]]:
        """Apply received frames, run timers, and return everything to send."""
        proto = self._proto()
        out: list[list[bytes]] = []
        for frames in batch:
            out += proto.handle(frames)
        proto.tick()
        out += proto.dispatch()
        return out

    def _decode(self, codec: int, payload: bytes) -> Any:
        """One of our own payloads (from memory or the spool); a pickle we may not load becomes a Refused."""
        if codec == PickleCodec.id and not self._unpickle:
            return Refused(codec, payload, PICKLE_REFUSED)
        try:
            return unpack(codec, payload, allow_pickle=self._unpickle)
        except ProtocolError as exc:
            return Refused(codec, payload, str(exc))

    def _letters(self, rows: list[tuple[int, int, bytes, int, str]]) -> list[DeadLetter]:
        letters = []
        for msg_id, codec, payload, attempts, error in rows:
            value = self._decode(codec, payload)
            if isinstance(value, Refused):
                error = f"{error}; {value.reason}"
            letters.append(DeadLetter(msg_id, value, attempts, error))
        return letters

    def _full_error(self) -> Unavailable:
        return Unavailable(
            f"pipeline queue full ({self._proto().max_queued} waiting) on {self.endpoint}: start workers or send later"
        )

    def stats(self) -> dict[str, int]:
        """Counters: sent, delivered, acked, in_flight, queued, retrying, retried, redelivered, dead, duplicates."""
        if self.protocol is None:
            return {}
        return self.protocol.stats()

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """A page of the messages that failed ``max_attempts`` times, oldest first, with their last error:
        ``limit`` of them after the first ``offset``. A value the producer may not decode (pickle without
        ``allow_pickle``) comes as a :class:`Refused` holding the raw bytes."""
        return self._letters(self._proto().dead_page(offset, limit))

    def _leftovers(self) -> list[tuple[int, Any]]:
        if self.protocol is None:
            return []
        left = [(i, self._decode(c, p)) for i, c, p in self.protocol.unfinished()]
        if left:
            where = f"kept in spool {self._spool.path!r}" if self._spool else "not delivered"
            log.warning("producer closed with %d unfinished message(s), %s", len(left), where)
        refused = [i for i, value in left if isinstance(value, Refused)]
        if refused:
            log.warning(
                "%d unfinished message(s) not decoded (ids %s...): %s", len(refused), refused[:10], PICKLE_REFUSED
            )
        return left

    def _close_sockets(self) -> None:
        for sock in (self._wake_rx, self._wake_tx):
            if sock is not None:
                sock.close(linger=0)
        # Fire-and-forget: what send() accepted is still in the pipe, so linger lets it go out (bounded).
        # Acked: the spool or the caller's leftovers list holds what was not done.
        self._sock.close(linger=None if self.protocol is None else 0)
        if self._spool is not None:
            self._spool.close()


class Producer(_ProducerBase):
    """Hands messages to a pool of workers; with ``acks`` (default) each is kept until acknowledged.

    >>> with Producer(bind="tcp://127.0.0.1:0") as producer:           # doctest: +SKIP
    ...     producer.send({"to": "a@example.org"})
    ...     producer.join(timeout=10)

    Workers connect to ``producer.endpoint``. Failed messages are retried with ``backoff`` up to
    ``max_attempts`` and then kept in ``dead_letters()``; ``spool="work.db"`` keeps accepted messages on disk.
    An acknowledged producer may be shared by threads; a fire-and-forget one (``acks=False``) sends from the
    caller's thread straight into its PUSH socket, so like a zmq socket it belongs to one thread at a time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        # Fire-and-forget of bare bytes calls the socket's backend send straight away: pyzmq's Python wrapper
        # only adds routing_id/group handling, and its frame is a fair part of the cost of a 100-byte message.
        self._bare_send: Callable[[bytes], Any] | None = None
        if not self.acks and self._bare_bytes:
            self._bare_send = functools.partial(_BACKEND_SEND, self._sock)
        if self.acks:
            self._thread = threading.Thread(target=self._loop, name="zmqkit-producer", daemon=True)
            self._thread.start()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, obj: Any, timeout: float | None = None) -> int:
        """Accept ``obj`` for delivery; return its id (0 without acks). Blocks while the queue is full
        (RequestTimeout after ``timeout``), or raises Unavailable at once with ``on_full="raise"``."""
        proto = self.protocol
        if proto is None:
            if self._bare_send is not None and timeout is None and type(obj) is bytes and obj[:4] != HDR:
                self._bare_send(obj)  # the fast path of fire-and-forget: bare bytes, block while the pipe is full
                return 0
            return self._push(encode_message(*self._codec.pack(obj)), timeout)
        codec, payload = (0, obj) if type(obj) is bytes and self._raw_bytes else self._codec.pack(obj)
        with self._lock:  # the plain lock (the condition's own): no waiting unless the queue is full
            if not self._closed and not proto.full():
                msg_id = proto.accept(codec, payload)
                if proto.hungry:  # else the I/O thread dispatches when acks return credit
                    self._wake()
                return msg_id
        return self.send_many([obj], timeout)[0]  # closed or full: raise, or wait for room

    def send_many(self, objs: Iterable[Any], timeout: float | None = None) -> list[int]:
        """Accept every one of ``objs``, in order; return their ids (0s without acks). Cheaper per message
        than :meth:`send`: one lock and one wake-up per batch. Backpressure as for :meth:`send`."""
        if self.protocol is None:
            if timeout is not None or self._bare_send is None:
                return [self.send(obj, timeout) for obj in objs]
            send, count = self._bare_send, 0
            for obj in objs:
                if type(obj) is bytes and obj[:4] != HDR:
                    send(obj)
                else:
                    self._push(encode_message(*self._codec.pack(obj)), None)
                count += 1
            return [0] * count
        proto, pack = self.protocol, self._codec.pack
        packed = [pack(obj) for obj in objs]
        ids: list[int] = []
        while len(ids) < len(packed):
            with self._cond:
                if self._closed:
                    raise ConfigurationError("send() on a closed Producer")
                if proto.full():
                    if self.on_full == "raise":
                        raise self._full_error()
                    if not self._cond.wait_for(lambda: not proto.full() or self._closed, timeout):
                        raise RequestTimeout(f"pipeline queue still full after {timeout}s on {self.endpoint}")
                    continue  # closed, or room: look again
                accept = proto.accept
                while len(ids) < len(packed) and not proto.full():
                    ids.append(accept(*packed[len(ids)]))
                if proto.hungry:  # else the I/O thread dispatches when acks return credit
                    self._wake()
        return ids

    def _wake(self) -> None:
        if not self._woken and self._wake_tx is not None:
            self._woken = True
            self._wake_tx.send(b"")

    def _push(self, msg: bytes, timeout: float | None) -> int:
        """Send one fire-and-forget frame."""
        send = self._sock.send
        if timeout is None and self.on_full == "block":
            send(msg)  # wait inside libzmq: no wake-up per message while the pipe is full
            return 0
        try:
            send(msg, NOBLOCK)
        except zmq.Again:
            if self.on_full == "raise":
                raise Unavailable(f"no worker is taking messages from {self.endpoint} (queue full)") from None
            if not self._sock.poll(_ms(timeout), zmq.POLLOUT):
                raise RequestTimeout(f"no worker took the message within {timeout}s on {self.endpoint}") from None
            send(msg, NOBLOCK)
        return 0

    def _loop(self) -> None:
        proto, sock, wake = self._proto(), self._sock, self._wake_rx
        assert wake is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        while True:
            with self._lock:
                if self._closed:
                    return
                timer = proto.next_timer()
            events = dict(poller.poll(100 if timer is None else min(100, int(timer * 1000) + 1)))
            if wake in events:
                _recv_ready(wake, [])
            batch: list[list[bytes]] = []
            if sock in events:
                _recv_ready(sock, batch)
            with self._cond:
                self._woken = False
                out = self._pump(batch)
                self._cond.notify_all()
            for frames in out:
                try:
                    sock.send_multipart(frames, NOBLOCK)
                except zmq.ZMQError as exc:  # the worker left (ROUTER_MANDATORY) or is not reading
                    log.info("worker %r unreachable (%s): its messages go to others", frames[0], exc.strerror)
                    with self._lock:
                        proto.lose(frames[0])

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as handlers return them; stop when none came for ``timeout`` seconds."""
        proto = self._proto()
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: proto.results or self._closed, timeout) or not proto.results:
                    return
                result = proto.results.popleft()
            yield result

    def join(self, timeout: float | None = None) -> None:
        """Wait until every accepted message is acknowledged or dead; RequestTimeout after ``timeout``."""
        proto = self._proto()
        with self._cond:
            if not self._cond.wait_for(proto.idle, timeout):
                raise RequestTimeout(f"{len(proto.messages)} message(s) still unfinished after {timeout}s")

    def resubmit(self, msg_id: int) -> None:
        """Send dead letter ``msg_id`` again, with a fresh attempt count."""
        with self._lock:
            self._proto().resubmit(msg_id)
            self._wake()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return super().stats()

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """A page of dead letters (see the base class); only the page is decoded, outside the lock."""
        proto = self._proto()
        if proto.spool is not None:
            rows = proto.dead_page(offset, limit)  # the spool has its own lock
        else:
            with self._lock:
                rows = proto.dead_page(offset, limit)
        return self._letters(rows)

    def close(self) -> list[tuple[int, Any]]:
        """Stop and close; return ``(id, value)`` of messages not acknowledged (still in the spool, if any)."""
        with self._cond:
            if self._closed:
                return []
            self._closed = True
            self._cond.notify_all()
            self._wake()  # the I/O thread may be polling: no need to wait out its poll
        if self._thread is not None:
            self._thread.join()
        left = self._leftovers()
        self._close_sockets()
        return left


class _Lane:
    """One handler thread's sockets (a DEALER per producer endpoint) and the lock that guards them.

    The lock lets the heartbeat thread send on these sockets while the handler runs (libzmq allows a socket
    to move between threads behind a full memory barrier, which the lock gives).
    """

    def __init__(self, socks: list[Any], credit: int, most: int, sink: Any) -> None:
        self.socks = socks
        self.protos = [WorkerProtocol(credit, most) for _ in socks]
        self.sink = sink
        self.lock = threading.Lock()
        self.last_hb = 0.0

    def beat(self) -> None:
        """Send a heartbeat on every socket (the caller holds the lock)."""
        for sock, proto in zip(self.socks, self.protos, strict=True):
            if not _send(sock, proto.heartbeat()):
                proto.unreachable()
        self.last_hb = time.monotonic()


class _WorkerBase:
    """Arguments, sockets and task bookkeeping shared by the blocking and asyncio workers."""

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
        curve: Curve | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        if not callable(handler):
            raise ConfigurationError(f"bad handler {handler!r}: expected a callable")
        binds, connects = _endpoints(bind, connect)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(f"bad concurrency {concurrency!r}: expected an integer >= 1")
        if binds and concurrency > 1 and not self._ASYNC:
            raise ConfigurationError(f"bind={bind!r} with concurrency={concurrency}: connect workers to the producer")
        # By default a worker asks for 100 messages and lets the producer go up to 1000 while it keeps up (see
        # protocol._Peer): fast handlers are not held back by round trips, slow ones hoard no more
        # than 100. An explicit credit is a fixed bound.
        most = 1000 if credit is None else credit
        credit = 100 if credit is None else credit
        if not isinstance(credit, int) or isinstance(credit, bool) or credit < 1:
            raise ConfigurationError(f"bad credit {credit!r}: expected an integer >= 1")
        if not isinstance(heartbeat, (int, float)) or heartbeat <= 0:
            raise ConfigurationError(f"bad heartbeat {heartbeat!r}: expected seconds > 0")
        self.handler = handler
        self.acks = acks
        self.heartbeat = float(heartbeat)
        self.stop_timeout = stop_timeout
        self.allow_pickle = allow_pickle
        self._codec = get_codec(codec)
        self._stop = threading.Event()
        self._closed = False
        self.processed = 0
        self.failed = 0
        opts = resolve_options(options, curve)
        lanes = 1 if self._ASYNC else concurrency
        self.concurrency = concurrency
        self.lanes: list[_Lane] = []
        self.endpoints: list[str] = []
        try:
            for _ in range(lanes):
                if acks:
                    socks = [make_socket("dealer", opts, asyncio=self._ASYNC) for _ in binds + connects]
                    for s, ep in zip(socks, binds + connects, strict=True):
                        self.endpoints += attach(s, [ep] if ep in binds else [], [ep] if ep in connects else [])
                else:
                    socks = [make_socket("pull", opts, asyncio=self._ASYNC)]
                    self.endpoints += attach(socks[0], binds, connects)
                sink_sock = None
                if sink is not None:
                    sink_sock = make_socket("push", opts, asyncio=self._ASYNC)
                    attach(sink_sock, [], [sink])
                self.lanes.append(_Lane(socks, credit, most, sink_sock))
        except BaseException:
            self._close_sockets()
            raise

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def stats(self) -> dict[str, int]:
        """Messages handled (``processed``) and handler failures (``failed``) since start."""
        return {"processed": self.processed, "failed": self.failed}

    def _value(self, task: Task) -> Any:
        return unpack(task.codec, task.payload, allow_pickle=self.allow_pickle)

    def _outcome(self, lane: _Lane, proto: WorkerProtocol, task: Task, result: Any, exc: BaseException | None) -> None:
        """Record how one task ended (results go to the sink when there is one, else back to the producer)."""
        if exc is not None:
            self.failed += 1
            if not isinstance(exc, Retry):
                log.warning("handler failed on message %d (attempt %d): %r", task.id, task.attempt, exc)
            proto.failed(task, exc)
            return
        self.processed += 1
        if result is not None and lane.sink is not None:
            cid, payload = self._codec.pack(result)
            lane.sink.send_multipart(encode_result(task.id, cid, payload))
            result = None
        proto.succeeded(task, result, self._codec)

    def _fire_and_forget(self, frame: bytes) -> Any:
        """Decode one PUSH/PULL frame; return the value, or ``_MALFORMED`` (logged)."""
        try:
            codec, payload = decode_message(frame)
            return unpack(codec, payload, allow_pickle=self.allow_pickle)
        except ProtocolError as exc:
            log.warning("dropped malformed fire-and-forget message: %s", exc)
            return _MALFORMED

    def _sink_result(self, lane: _Lane, result: Any) -> None:
        if result is not None and lane.sink is not None:
            cid, payload = self._codec.pack(result)
            lane.sink.send_multipart(encode_result(0, cid, payload))

    def _close_sockets(self) -> None:
        for lane in self.lanes:
            for sock in [*lane.socks, lane.sink]:
                if sock is not None:
                    sock.close(linger=None if sock is lane.sink else 0)  # results still in the pipe may go out


class Worker(_WorkerBase):
    """Runs ``handler(value)`` on each message; a return value acknowledges (and is sent back as the result),
    ``raise Retry(delay=...)`` retries later, any other exception retries with backoff.

    >>> def send_mail(msg): ...                                           # doctest: +SKIP
    >>> Worker(send_mail, connect="tcp://queue:5555", concurrency=4).run()  # until SIGTERM / Ctrl-C

    ``start()`` runs it in background threads instead; ``stop()`` stops taking work, finishes and
    acknowledges what is in hand, and returns.
    """

    def __init__(self, handler: Callable[[Any], Any], *args: Any, **kwargs: Any) -> None:
        if inspect.iscoroutinefunction(handler):
            raise ConfigurationError(f"handler {handler!r} is async: use zmqkit.asyncio.Worker")
        super().__init__(handler, *args, **kwargs)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Worker:
        """Run in background threads (one per ``concurrency``); return self."""
        if self._threads:
            return self
        target = self._lane_acked if self.acks else self._lane_plain
        self._threads = [threading.Thread(target=target, args=(lane,), daemon=True) for lane in self.lanes]
        if self.acks:
            self._threads.append(threading.Thread(target=self._heartbeats, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def run(self, timeout: float | None = None) -> None:
        """Work until stopped, SIGTERM or Ctrl-C (or ``timeout`` seconds), then stop gracefully and close."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start()
            self._stop.wait(timeout)
        finally:
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is in hand, acknowledge it; wait up to ``timeout`` seconds."""
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop (gracefully) and close the sockets."""
        if not self._closed:
            self._closed = True
            self.stop(self.stop_timeout + 5)
            self._close_sockets()

    def _heartbeats(self) -> None:
        """Keep the producer sure we are alive while a handler runs long."""
        while not self._stop.wait(self.heartbeat / 2):
            for lane in self.lanes:
                if time.monotonic() - lane.last_hb >= self.heartbeat:
                    with lane.lock:
                        lane.beat()

    def _lane_acked(self, lane: _Lane) -> None:
        poller = zmq.Poller()
        for sock in lane.socks:
            poller.register(sock, zmq.POLLIN)
        with lane.lock:
            for sock, proto in zip(lane.socks, lane.protos, strict=True):
                if not _send(sock, proto.ready()):  # the producer is not connected yet
                    proto.unreachable()
        deadline = None
        watching: set[Any] = set()  # sockets polled for POLLOUT: their producer is to be greeted once connected
        while True:
            received: list[tuple[Any, WorkerProtocol, list[bytes]]] = []
            for sock, proto in zip(lane.socks, lane.protos, strict=True):
                if proto.greet != (sock in watching):
                    poller.register(sock, zmq.POLLIN | (zmq.POLLOUT if proto.greet else 0))
                    watching.symmetric_difference_update([sock])
            with lane.lock:
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.stop_timeout
                    for sock, proto in zip(lane.socks, lane.protos, strict=True):
                        if not _send(sock, proto.bye()):
                            proto.unreachable()  # no producer connected: nothing more can come
                if deadline is not None and (
                    all(p.closed and not p.held for p in lane.protos) or time.monotonic() > deadline
                ):
                    return
                for sock, events in poller.poll(100):
                    proto = lane.protos[lane.socks.index(sock)]
                    if events & zmq.POLLOUT and proto.greet:
                        _send(sock, proto.greeting())  # just connected (IMMEDIATE: writable only then)
                    if events & zmq.POLLIN:
                        received += [(sock, proto, frames) for frames in _recv_ready(sock, [])]
                if time.monotonic() - lane.last_hb >= self.heartbeat:
                    lane.beat()
            for sock, proto, frames in received:
                tasks, replies = proto.feed(frames)
                self._run_tasks(lane, proto, tasks)
                with lane.lock:
                    for out in replies + proto.flush():
                        _send(sock, out)

    def _run_tasks(self, lane: _Lane, proto: WorkerProtocol, tasks: list[Task]) -> None:
        """Run a batch of tasks through the handler, recording each outcome (plain acks on a fast path)."""
        handler, allow, done = self.handler, self.allow_pickle, []
        for task in tasks:
            try:
                result = handler(
                    task.payload if task.codec == 0 else unpack(task.codec, task.payload, allow_pickle=allow)
                )
            except Exception as exc:
                self._outcome(lane, proto, task, None, exc)
                continue
            if result is None:
                done.append(task.id)
            else:
                self._outcome(lane, proto, task, result, None)
        proto.acked(done)
        self.processed += len(done)

    def _lane_plain(self, lane: _Lane) -> None:
        (sock,) = lane.socks
        handler, recv, sink = self.handler, sock.recv, lane.sink
        while not self._stop.is_set():
            if not sock.poll(100):
                continue
            done = 0
            try:
                # The hot loop of fire-and-forget: one recv per bare-bytes message, nothing else in between.
                for _ in range(_DRAIN):  # then look at the stop flag again
                    value = recv(NOBLOCK)
                    if value[:4] == HDR:  # anything but bare bytes (checking RCVMORE would cost more than this)
                        value = self._fire_and_forget(value)
                        if value is _MALFORMED:
                            continue
                    try:
                        result = handler(value)
                    except Exception as exc:
                        self.failed += 1
                        log.warning("handler failed on a fire-and-forget message: %r", exc)
                        continue
                    done += 1
                    if sink is not None and result is not None:
                        self._sink_result(lane, result)
            except zmq.Again:
                pass
            self.processed += done


class Sink:
    """Collects results that workers started with ``sink=`` push to it (fan-in of many workers).

    >>> with Sink(bind="tcp://127.0.0.1:0") as sink:                     # doctest: +SKIP
    ...     for result in sink.results(timeout=5): print(result.id, result.value)
    """

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
        binds, connects = _endpoints(bind, connect)
        self.allow_pickle = allow_pickle
        self._sock = make_socket("pull", resolve_options(options, curve), asyncio=self._ASYNC)
        self.endpoints = attach(self._sock, binds, connects)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, frames: list[bytes]) -> Result | None:
        try:
            msg_id, codec, payload = decode_result(frames)
            return Result(msg_id, unpack(codec, payload, allow_pickle=self.allow_pickle))
        except ProtocolError as exc:
            log.warning("sink dropped a malformed result: %s", exc)
            return None

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as they arrive; stop when none came for ``timeout`` seconds."""
        while self._sock.poll(_ms(timeout)):
            result = self._decode(self._sock.recv_multipart())
            if result is not None:
                yield result

    def close(self) -> None:
        self._sock.close(linger=0)
