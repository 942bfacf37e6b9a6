"""Pipeline runners for asyncio: the same Producer, Worker and Sink, with I/O methods as coroutines.

They share arguments, sockets and every protocol decision with the blocking runners in pipeline.py (through
``_ProducerBase`` / ``_WorkerBase`` and protocol); only the waiting differs. Import them from
``zmqkit.asyncio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import zmq
import zmq.asyncio

from zmqkit.errors import ConfigurationError, RequestTimeout, Unavailable
from zmqkit.sockets import NOBLOCK

from .protocol import Result, Task, WorkerProtocol, encode_message
from .sync import _DRAIN, _MALFORMED, _Lane, _ms, _ProducerBase, _WorkerBase
from .sync import Sink as _SyncSink

__all__ = ["Producer", "Worker", "Sink"]

log = logging.getLogger(__name__)


async def _asend(sock: Any, frames: list[bytes]) -> bool:
    """Send without blocking; False when the peer is not there (IMMEDIATE) or not reading."""
    try:
        await sock.send_multipart(frames, NOBLOCK)
        return True
    except zmq.Again:
        return False


async def _drain(sock: Any, into: list[Any], tag: Any = None) -> None:
    with contextlib.suppress(zmq.Again):
        for _ in range(_DRAIN):
            frames = await sock.recv_multipart(NOBLOCK)
            into.append(frames if tag is None else (tag, frames))


async def _within(awaitable: Any, timeout: float | None, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(what) from None


class Producer(_ProducerBase):
    """The asyncio twin of :class:`zmqkit.patterns.Producer`.

    >>> async with Producer(bind="tcp://127.0.0.1:0") as producer:      # doctest: +SKIP
    ...     await producer.send({"to": "a@example.org"})
    ...     await producer.join(timeout=10)
    """

    _ASYNC = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task[None] | None = None
        self._cond: asyncio.Condition | None = None

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _started(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        if self._task is None and self.protocol is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self._cond

    async def _until(self, predicate: Callable[[], Any], timeout: float | None, what: str) -> None:
        cond = self._started()

        async def wait() -> None:
            async with cond:
                await cond.wait_for(predicate)

        await _within(wait(), timeout, what)

    async def send(self, obj: Any, timeout: float | None = None) -> int:
        """Accept ``obj`` for delivery; return its id (0 without acks). Waits while the queue is full."""
        return (await self.send_many([obj], timeout))[0]

    async def send_many(self, objs: Iterable[Any], timeout: float | None = None) -> list[int]:
        """Accept every one of ``objs``, in order; return their ids (0s without acks)."""
        if self._closed:
            raise ConfigurationError("send() on a closed Producer")
        packed = [self._codec.pack(obj) for obj in objs]
        if self.protocol is None:
            return [await self._push(encode_message(codec, payload), timeout) for codec, payload in packed]
        proto = self.protocol
        self._started()
        ids: list[int] = []
        while len(ids) < len(packed):
            if proto.full():
                if self.on_full == "raise":
                    raise self._full_error()
                await self._until(
                    lambda: not proto.full() or self._closed, timeout, f"pipeline queue still full after {timeout}s"
                )
                if self._closed:
                    raise ConfigurationError("send() on a closed Producer")
            while len(ids) < len(packed) and not proto.full():
                ids.append(proto.accept(*packed[len(ids)]))
            if proto.hungry and not self._woken and self._wake_tx is not None:
                self._woken = True
                await self._wake_tx.send(b"")
        return ids

    async def _push(self, frame: bytes, timeout: float | None) -> int:
        frames = [frame]
        if await _asend(self._sock, frames):
            return 0
        if self.on_full == "raise":
            raise Unavailable(f"no worker is taking messages from {self.endpoint} (queue full)")
        if not await self._sock.poll(_ms(timeout), zmq.POLLOUT):
            raise RequestTimeout(f"no worker took the message within {timeout}s on {self.endpoint}")
        await self._sock.send_multipart(frames, NOBLOCK)
        return 0

    async def _loop(self) -> None:
        proto, sock, wake = self._proto(), self._sock, self._wake_rx
        cond = self._started()
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        while not self._closed:
            timer = proto.next_timer()
            events = dict(await poller.poll(100 if timer is None else min(100, int(timer * 1000) + 1)))
            if wake in events:
                await _drain(wake, [])
            batch: list[list[bytes]] = []
            if sock in events:
                await _drain(sock, batch)
            self._woken = False
            for frames in self._pump(batch):
                try:
                    await sock.send_multipart(frames, NOBLOCK)
                except zmq.ZMQError as exc:
                    log.info("worker %r unreachable (%s): its messages go to others", frames[0], exc.strerror)
                    proto.lose(frames[0])
            async with cond:
                cond.notify_all()

    async def results(self, timeout: float | None = None) -> AsyncIterator[Result]:
        """Yield results as handlers return them; stop when none came for ``timeout`` seconds."""
        proto = self._proto()
        while True:
            try:
                await self._until(lambda: proto.results or self._closed, timeout, "")
            except RequestTimeout:
                return
            if not proto.results:
                return
            yield proto.results.popleft()

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every accepted message is acknowledged or dead; RequestTimeout after ``timeout``."""
        proto = self._proto()
        await self._until(proto.idle, timeout, f"messages still unfinished after {timeout}s")

    async def resubmit(self, msg_id: int) -> None:
        """Send dead letter ``msg_id`` again, with a fresh attempt count."""
        self._proto().resubmit(msg_id)
        self._started()
        await self._wake_tx.send(b"")  # type: ignore[union-attr]

    async def close(self) -> list[tuple[int, Any]]:
        """Stop and close; return ``(id, value)`` of messages not acknowledged (still in the spool, if any)."""
        if self._closed:
            return []
        self._closed = True
        if self._task is not None:
            await self._task
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()
        left = self._leftovers()
        self._close_sockets()
        return left


class Worker(_WorkerBase):
    """The asyncio twin of :class:`zmqkit.patterns.Worker`: the handler may be ``async def``; ``concurrency``
    handlers run at once on the event loop.

    >>> async def thumbnail(path): ...                                   # doctest: +SKIP
    >>> await Worker(thumbnail, connect="tcp://queue:5555", concurrency=8).run()
    """

    _ASYNC = True

    def __init__(self, handler: Callable[[Any], Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> Worker:
        """Run as a task on the running event loop; return self."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._main())
        return self

    async def run(self, timeout: float | None = None) -> None:
        """Work until stopped, SIGTERM or Ctrl-C (or ``timeout`` seconds), then stop gracefully and close."""
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT)
        installed = []
        for sig in sigs:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
        try:
            self.start()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)  # type: ignore[arg-type]
        finally:
            await self.close()
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is in hand, acknowledge it."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def close(self) -> None:
        """Stop (gracefully) and close the sockets."""
        if not self._closed:
            self._closed = True
            await self.stop(self.stop_timeout + 5)
            self._close_sockets()

    async def _call(self, value: Any) -> Any:
        result = self.handler(value)
        return await result if inspect.isawaitable(result) else result

    async def _main(self) -> None:
        (lane,) = self.lanes
        await (self._acked(lane) if self.acks else self._plain(lane))

    async def _plain(self, lane: _Lane) -> None:
        (sock,) = lane.socks
        while not self._stop.is_set():
            if not await sock.poll(100):
                continue
            received: list[list[bytes]] = []
            await _drain(sock, received)
            for (frame,) in received:
                value = self._fire_and_forget(frame)
                if value is _MALFORMED:
                    continue
                try:
                    self._sink_result(lane, await self._call(value))
                    self.processed += 1
                except Exception as exc:
                    self.failed += 1
                    log.warning("handler failed on a fire-and-forget message: %r", exc)

    async def _acked(self, lane: _Lane) -> None:
        queue: asyncio.Queue[tuple[Any, WorkerProtocol, Task]] = asyncio.Queue()
        consumers = [asyncio.ensure_future(self._consume(lane, queue)) for _ in range(self.concurrency)]
        beats = asyncio.ensure_future(self._heartbeats(lane))
        poller = zmq.asyncio.Poller()
        for sock, proto in zip(lane.socks, lane.protos, strict=True):
            poller.register(sock, zmq.POLLIN)
            if not await _asend(sock, proto.ready()):  # the producer is not connected yet
                proto.unreachable()
        deadline = None
        watching: set[Any] = set()  # sockets polled for POLLOUT: their producer is to be greeted once connected
        try:
            while True:
                for sock, proto in zip(lane.socks, lane.protos, strict=True):
                    if proto.greet != (sock in watching):
                        poller.register(sock, zmq.POLLIN | (zmq.POLLOUT if proto.greet else 0))
                        watching.symmetric_difference_update([sock])
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.stop_timeout
                    for sock, proto in zip(lane.socks, lane.protos, strict=True):
                        if not await _asend(sock, proto.bye()):
                            proto.unreachable()
                if deadline is not None and (all(p.closed for p in lane.protos) or time.monotonic() > deadline):
                    break
                received: list[tuple[Any, list[bytes]]] = []
                for sock, events in await poller.poll(100):
                    proto = lane.protos[lane.socks.index(sock)]
                    if events & zmq.POLLOUT and proto.greet:
                        await _asend(sock, proto.greeting())  # just connected (IMMEDIATE: writable only then)
                    if events & zmq.POLLIN:
                        await _drain(sock, received, sock)
                for sock, frames in received:
                    proto = lane.protos[lane.socks.index(sock)]
                    tasks, replies = proto.feed(frames)
                    for reply in replies:
                        await _asend(sock, reply)
                    for task in tasks:
                        queue.put_nowait((sock, proto, task))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(queue.join(), max(0.0, deadline - time.monotonic()))
        finally:
            for fut in [*consumers, beats]:
                fut.cancel()
            await asyncio.gather(*consumers, beats, return_exceptions=True)

    async def _consume(self, lane: _Lane, queue: asyncio.Queue[tuple[Any, WorkerProtocol, Task]]) -> None:
        while True:
            sock, proto, task = await queue.get()
            try:
                result, exc = await self._call(self._value(task)), None
            except Exception as e:
                result, exc = None, e
            self._outcome(lane, proto, task, result, exc)
            queue.task_done()
            if queue.empty() or proto.unflushed >= 64:  # batch acks while a backlog is being worked off
                for out in proto.flush():
                    await _asend(sock, out)

    async def _heartbeats(self, lane: _Lane) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)  # a timer, not synchronisation
            for sock, proto in zip(lane.socks, lane.protos, strict=True):
                if not await _asend(sock, proto.heartbeat()):
                    proto.unreachable()


class Sink(_SyncSink):
    """The asyncio twin of :class:`zmqkit.patterns.Sink`."""

    _ASYNC = True

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def results(self, timeout: float | None = None) -> AsyncIterator[Result]:  # type: ignore[override]
        """Yield results as they arrive; stop when none came for ``timeout`` seconds."""
        while await self._sock.poll(_ms(timeout)):
            result = self._decode(await self._sock.recv_multipart())
            if result is not None:
                yield result
