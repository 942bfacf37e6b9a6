"""Pipeline runners (blocking): Producer, Worker and Sink perform the actions of the logic in core.py.

Acknowledged mode: the producer's ROUTER is owned by a background I/O thread; callers' threads share the
protocol with it under one lock and wake it over an inproc PAIR. Fire-and-forget mode (``acks=False``) is
plain PUSH/PULL from the caller's thread.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq

from zmqkit.checks import check_timeout, to_ms
from zmqkit.errors import ConfigurationError, RequestTimeout
from zmqkit.sockets import NOBLOCK, has_input, send_frame

from .actions import Action, Notify, Poll, Recv, Run, Send, Steps, T, Wait, Wake, Writable
from .core import DRAIN, MALFORMED, ProducerCore, SinkCore, WorkerCore
from .protocol import HDR, Backoff, DeadLetter, Refused, Result, Retry

__all__ = ["Producer", "Worker", "Sink", "Retry", "Backoff", "DeadLetter", "Refused", "Result"]

log = logging.getLogger(__name__)


def _recv_ready(sock: Any) -> list[list[bytes]]:
    """Up to DRAIN queued messages of a socket that polled readable. Asks the socket whether more is queued
    instead of reading until zmq.Again: raising Again costs more than a message."""
    into = []
    for _ in range(DRAIN):
        into.append(sock.recv_multipart(NOBLOCK))
        if not has_input(sock):
            break
    return into


def _perform(action: Action, run: Callable[[Run], None] | None) -> Any:
    """Perform a socket action, or run handlers."""
    if isinstance(action, Send):
        if action.block:
            action.sock.send_multipart(action.frames)
            return True
        try:
            action.sock.send_multipart(action.frames, NOBLOCK)
            return True
        except zmq.ZMQError:  # Again: no peer or pipe full; EHOSTUNREACH: the peer left
            return False
    if isinstance(action, Recv):
        return _recv_ready(action.sock)
    if isinstance(action, Poll):
        if not action.items:  # a worker following a service with no producer yet: zmq_poll would not wait
            time.sleep(action.ms / 1000)
            return []
        return zmq.zmq_poll(action.items, action.ms)
    if isinstance(action, Writable):
        return bool(action.sock.poll(to_ms(action.timeout), zmq.POLLOUT))
    assert run is not None and isinstance(action, Run)
    return run(action)


def _drive(
    steps: Steps[T],
    cond: threading.Condition,
    *,
    io_unlocked: bool = True,
    wake: Callable[[], object] | None = None,
    run: Callable[[Run], None] | None = None,
) -> T:
    """Perform the actions of ``steps`` and return its value. The logic runs holding ``cond``'s lock, let go
    while waiting (Wait, Writable, a blocking Send), while handlers run, and, with ``io_unlocked``, during
    every socket call (Poll, Recv, Send)."""
    result: Any = None
    with cond:
        try:
            while True:
                action = steps.send(result)
                kind = type(action)
                if kind is Wait:
                    result = cond.wait_for(action.ready, action.timeout)  # type: ignore[union-attr]
                elif kind is Notify:
                    cond.notify_all()
                elif kind is Wake:
                    assert wake is not None
                    result = wake()
                elif io_unlocked or kind is Run or kind is Writable or (kind is Send and action.block):  # type: ignore[union-attr]
                    cond.release()
                    try:
                        result = _perform(action, run)
                    finally:
                        cond.acquire()
                else:
                    result = _perform(action, run)
        except StopIteration as stop:
            return stop.value


class Producer(ProducerCore):
    """Hands messages to a pool of workers; with ``acks`` (default) each is kept until acknowledged.

    >>> with Producer(bind="tcp://127.0.0.1:0") as producer:           # doctest: +SKIP
    ...     producer.send({"to": "a@example.org"})
    ...     producer.join(timeout=10)

    Workers connect to ``producer.endpoint``. Failed messages are retried with ``backoff`` up to
    ``max_attempts`` and then kept in ``dead_letters()``; ``spool="work.db"`` keeps accepted messages on disk.
    An acknowledged producer may be shared by threads; a fire-and-forget one (``acks=False``) sends from the
    caller's thread straight into its PUSH socket, so like a zmq socket it belongs to one thread at a time.
    """

    def _setup(self) -> None:
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        # The one fast path (docs/performance.md): fire-and-forget bare bytes go straight into the PUSH socket.
        self._bare = not self.acks and self.on_full == "block" and self._raw_bytes
        if self.acks:
            self._thread = threading.Thread(target=self._io_thread, name="zmqkit-producer", daemon=True)
            self._thread.start()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, steps: Steps[T]) -> T:
        return _drive(steps, self._cond, wake=self._wake)

    def _wake(self) -> None:
        assert self._wake_tx is not None
        self._wake_tx.send(b"")

    def _io_thread(self) -> None:
        _drive(self._io(), self._cond, wake=self._wake)

    def send(self, obj: Any, timeout: float | None = None) -> int:
        """Accept ``obj`` for delivery; return its id (0 without acks). Blocks while the queue is full
        (RequestTimeout after ``timeout`` seconds; None: no limit), or raises Unavailable at once with
        ``on_full="raise"``."""
        if self._bare and timeout is None and type(obj) is bytes and obj[:4] != HDR:
            send_frame(self._sock, obj)  # the fast path
            return 0
        if self.protocol is None:
            return self.send_many((obj,), timeout)[0]
        timeout = check_timeout(timeout, allow_zero=True)
        codec, payload = self._pack(obj)
        with self._lock:  # the condition's own lock: waiting only when full
            msg_id = self._admit(codec, payload, timeout)
            if self._wake_wanted():
                self._wake()
        return msg_id

    def send_many(self, objs: Iterable[Any], timeout: float | None = None) -> list[int]:
        """Accept every one of ``objs``, in order; return their ids (0s without acks). Cheaper per message
        than :meth:`send`: one lock and one wake-up per batch. Backpressure as for :meth:`send`."""
        timeout = check_timeout(timeout, allow_zero=True)
        if self.protocol is None:
            if self._bare and timeout is None:
                sock, count = self._sock, 0
                for obj in objs:
                    if type(obj) is bytes and obj[:4] != HDR:
                        send_frame(sock, obj)  # the fast path
                    else:
                        self._run(self._push_many((obj,), None))
                    count += 1
                return [0] * count
            return self._run(self._push_many(objs, timeout))
        packed = [self._pack(obj) for obj in objs]
        with self._lock:
            ids = [self._admit(codec, payload, timeout) for codec, payload in packed]
            if self._wake_wanted():
                self._wake()
        return ids

    def _admit(self, codec: int, payload: bytes, timeout: float | None) -> int:
        """Accept one packed message, waiting while the queue is full (the caller holds the lock)."""
        while (msg_id := self._accept(codec, payload)) is None:
            if self._wake_wanted():  # what is queued goes out while we wait
                self._wake()
            if not self._cond.wait_for(self._room, timeout):
                raise self._still_full(timeout)
        return msg_id

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as handlers return them; stop when none came for ``timeout`` seconds (None: no limit)."""
        timeout = check_timeout(timeout, allow_zero=True)
        while (result := self._run(self._next_result(timeout))) is not None:
            yield result

    def join(self, timeout: float | None = None) -> None:
        """Wait until every accepted message is acknowledged or dead; RequestTimeout after ``timeout`` seconds
        (None: no limit)."""
        self._run(self._join(timeout))

    def resubmit(self, msg_id: int) -> None:
        """Send dead letter ``msg_id`` again, with a fresh attempt count."""
        self._run(self._resubmit(msg_id))

    def leave(self, timeout: float | None = 10.0) -> list[tuple[int, Any]]:
        """Go away gracefully: announce maintenance (when announced), let workers finish what was accepted (up
        to ``timeout`` seconds), then close; return ``(id, value)`` of messages not acknowledged."""
        self._leaving()
        if self.protocol is not None and not self._closed:
            with contextlib.suppress(RequestTimeout):
                self.join(timeout)
        return self.close()

    def close(self) -> list[tuple[int, Any]]:
        """Stop and close at once (idempotent); return ``(id, value)`` of messages not acknowledged (still in
        the spool, if any). An announced producer says maintenance, then down once closed."""
        self._leaving()
        with self._cond:
            if self._closed:
                return []
            self._closed = True
            self._bare = False
            self._cond.notify_all()
            if self._wake_tx is not None:
                self._wake_tx.send(b"")  # the I/O thread may be polling: no need to wait out its poll
        if self._thread is not None:
            self._thread.join()
        return self._shut()


class Worker(WorkerCore):
    """Runs ``handler(value)`` on each message; a return value acknowledges (and is sent back as the result),
    ``raise Retry(delay=...)`` retries later, any other exception retries with backoff.

    >>> def send_mail(msg): ...                                           # doctest: +SKIP
    >>> Worker(send_mail, connect="tcp://queue:5555", concurrency=4).run()  # until SIGTERM / Ctrl-C

    ``start()`` runs it in background threads instead; ``stop()`` stops taking work, finishes and
    acknowledges what is in hand, and returns.
    """

    def _check_handler(self, handler: Callable[[Any], Any]) -> None:
        if inspect.iscoroutinefunction(handler):
            raise ConfigurationError(f"handler {handler!r} is async: use zmqkit.asyncio.Worker")

    def _setup(self) -> None:
        self._threads: list[threading.Thread] = []
        self._conds = [threading.Condition(lane.lock) for lane in self.lanes]

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Worker:
        """Run in background threads (one per ``concurrency``); return self."""
        if self._closed:
            raise self._closed_error()
        if self._threads:
            return self
        target = self._lane_acked if self.acks else self._lane_plain
        self._threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(len(self.lanes))]
        if self.acks:
            self._threads.append(threading.Thread(target=self._heartbeats, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def run(self, timeout: float | None = None) -> None:
        """Work until stopped, SIGTERM or Ctrl-C (or ``timeout`` seconds), then stop gracefully and close."""
        timeout = check_timeout(timeout)
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
        timeout = check_timeout(timeout, allow_zero=True)
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop as :meth:`stop` does (bounded by ``stop_timeout``) and close the sockets; idempotent."""
        if not self._closed:
            self._closed = True
            self.stop(self.stop_timeout + 5)
            self._close_sockets()

    def _heartbeats(self) -> None:
        """Keep the producers sure we are alive while a handler runs long."""
        while not self._stop.wait(self.heartbeat / 2):
            for lane, cond in zip(self.lanes, self._conds, strict=True):
                if time.monotonic() - lane.last_hb >= self.heartbeat:
                    _drive(self._beat(lane), cond, io_unlocked=False)

    def _lane_acked(self, index: int) -> None:
        # Socket calls keep the lane's lock: the heartbeat thread sends on these sockets too.
        _drive(self._lane(self.lanes[index]), self._conds[index], io_unlocked=False, run=self._run_tasks)

    def _run_tasks(self, run: Run) -> None:
        """Run a batch of tasks through the handler, recording each outcome (plain acks in one go)."""
        lane, proto, handler, value, done = run.lane, run.proto, self.handler, self._value, []
        for task in run.tasks:
            try:
                result = handler(value(task))
            except Exception as exc:
                self._outcome(lane, proto, task, None, exc)
                continue
            if result is None:
                done.append(task.id)
            else:
                self._outcome(lane, proto, task, result, None)
        proto.acked(done)
        lane.processed += len(done)

    def _lane_plain(self, index: int) -> None:
        lane = self.lanes[index]
        (sock,) = lane.socks
        handler, recv, following = self.handler, sock.recv, lane.following
        while not self._stop.is_set():
            if following is not None and following.members.version != following.version:
                self._follow_plain(lane)
            if not sock.poll(100):
                continue
            done = 0
            try:
                for _ in range(DRAIN):  # then look at the stop flag again
                    value = recv(NOBLOCK)
                    if value[:4] == HDR:  # anything but bare bytes (checking RCVMORE would cost more than this)
                        value = self._fire_and_forget(value)
                        if value is MALFORMED:
                            continue
                    try:
                        result = handler(value)
                    except Exception as exc:
                        self._plain_outcome(lane, None, exc)
                        continue
                    if result is None:
                        done += 1  # counted once per wake-up: this loop runs once per message
                    else:
                        self._plain_outcome(lane, result, None)
            except zmq.Again:
                pass
            lane.processed += done


class Sink(SinkCore):
    """Collects results that workers started with ``sink=`` push to it (fan-in of many workers).

    >>> with Sink(bind="tcp://127.0.0.1:0") as sink:                     # doctest: +SKIP
    ...     for result in sink.results(timeout=5): print(result.id, result.value)
    """

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Yield results as they arrive; stop when none came for ``timeout`` seconds (None: no limit)."""
        while self._sock.poll(self._wait_ms(timeout)):
            result = self._decode(self._sock.recv_multipart())
            if result is not None:
                yield result
