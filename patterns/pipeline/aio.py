"""Pipeline runners for asyncio: Producer, Worker and Sink perform the actions of the logic in core.py with
coroutines; handlers may be ``async def``. Import them from ``zmqkit.asyncio``.

``close()`` closes at once; ``await aclose()`` (and ``async with``) first lets work in flight finish.
Cancelling a ``send``/``join``/``results`` wait cancels only the wait: messages already accepted stay with the
producer and are still delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from typing import Any

import zmq
import zmq.asyncio

from zmqkit.checks import check_timeout, to_ms
from zmqkit.errors import RequestTimeout
from zmqkit.sockets import NOBLOCK

from .actions import Notify, Poll, Recv, Run, Send, Steps, T, Wait, Wake, Writable
from .core import DRAIN, MALFORMED, Lane, ProducerCore, SinkCore, WorkerCore
from .protocol import Result, Task, WorkerProtocol

__all__ = ["Producer", "Worker", "Sink"]

log = logging.getLogger(__name__)


async def _drain(sock: Any) -> list[list[bytes]]:
    into: list[list[bytes]] = []
    with contextlib.suppress(zmq.Again):
        for _ in range(DRAIN):
            into.append(await sock.recv_multipart(NOBLOCK))
    return into


async def _poll(items: list[tuple[Any, int]], ms: int) -> list[tuple[Any, int]]:
    poller = zmq.asyncio.Poller()
    for sock, events in items:
        poller.register(sock, events)
    return await poller.poll(ms)


class _Driven:
    """Performs the actions of core.py's logic on the event loop (mixed into each asyncio runner)."""

    _changed: asyncio.Future[None] | None = None
    _wake_tx: Any = None

    def _notify(self) -> None:
        """Let every waiter look again (plain: close() calls it)."""
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _wait(self, wait: Wait) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if wait.timeout is None else loop.time() + wait.timeout
        while not wait.ready():
            if self._changed is None:
                self._changed = loop.create_future()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), left)
        return True

    async def _perform(self, action: Any) -> Any:
        kind = type(action)
        if kind is Send:
            sock, frames, block = action
            try:
                await sock.send_multipart(frames, 0 if block else NOBLOCK)
                return True
            except zmq.ZMQError:  # Again: no peer or pipe full; EHOSTUNREACH: the peer left
                if block:
                    raise
                return False
        if kind is Recv:
            return await _drain(action.sock)
        if kind is Poll:
            return await _poll(*action)
        if kind is Wait:
            return await self._wait(action)
        if kind is Notify:
            self._notify()
            return None
        if kind is Wake:
            await self._wake_tx.send(b"")
            return None
        if kind is Writable:
            return bool(await action.sock.poll(to_ms(action.timeout), zmq.POLLOUT))
        return await self._perform_run(action)

    async def _perform_run(self, run: Run) -> None:
        raise NotImplementedError

    async def _run(self, steps: Steps[T]) -> T:
        """Perform the actions of ``steps`` and return its value."""
        result: Any = None
        try:
            while True:
                result = await self._perform(steps.send(result))
        except StopIteration as stop:
            return stop.value


class Producer(_Driven, ProducerCore):
    """The asyncio twin of :class:`zmqkit.patterns.Producer`.

    >>> async with Producer(bind="tcp://127.0.0.1:0") as producer:      # doctest: +SKIP
    ...     await producer.send({"to": "a@example.org"})
    ...     await producer.join(timeout=10)
    """

    _ASYNC = True

    def _setup(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _started(self) -> None:
        # The I/O loop starts with the first call on the running loop (the constructor may run outside one).
        if self._task is None and self.protocol is not None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(self._io()))

    async def send(self, obj: Any, timeout: float | None = None) -> int:
        """Accept ``obj`` for delivery; return its id (0 without acks). Waits while the queue is full
        (RequestTimeout after ``timeout`` seconds; None: no limit)."""
        return (await self.send_many((obj,), timeout))[0]

    async def send_many(self, objs: Iterable[Any], timeout: float | None = None) -> list[int]:
        """Accept every one of ``objs``, in order; return their ids (0s without acks)."""
        timeout = check_timeout(timeout, allow_zero=True)
        self._started()
        if self.protocol is None:
            return await self._run(self._push_many(objs, timeout))
        packed = [self._pack(obj) for obj in objs]  # all packed before any is accepted: a bad one sends none
        ids = [await self._admit(codec, payload, timeout) for codec, payload in packed]
        if self._wake_wanted():
            await self._wake_tx.send(b"")
        return ids

    async def _admit(self, codec: int, payload: bytes, timeout: float | None) -> int:
        """Accept one packed message, waiting while the queue is full."""
        while (msg_id := self._accept(codec, payload)) is None:
            if self._wake_wanted():  # what is queued goes out while we wait
                await self._wake_tx.send(b"")
            if not await self._wait(Wait(self._room, timeout)):
                raise self._still_full(timeout)
        return msg_id

    async def results(self, timeout: float | None = None) -> AsyncIterator[Result]:
        """Yield results as handlers return them; stop when none came for ``timeout`` seconds (None: no limit)."""
        timeout = check_timeout(timeout, allow_zero=True)
        self._started()
        while (result := await self._run(self._next_result(timeout))) is not None:
            yield result

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every accepted message is acknowledged or dead; RequestTimeout after ``timeout`` seconds
        (None: no limit)."""
        self._started()
        await self._run(self._join(timeout))

    async def resubmit(self, msg_id: int) -> None:
        """Send dead letter ``msg_id`` again, with a fresh attempt count."""
        self._started()
        await self._run(self._resubmit(msg_id))

    def close(self) -> list[tuple[int, Any]]:
        """Stop and close at once (idempotent); return ``(id, value)`` of messages not acknowledged (still in
        the spool, if any). An announced producer says maintenance, then down once closed."""
        self._leaving()
        if self._closed:
            return []
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._notify()
        return self._shut()

    async def leave(self, timeout: float | None = 10.0) -> list[tuple[int, Any]]:
        """Go away gracefully: :meth:`aclose` with ``drain`` (maintenance, workers finish, then down)."""
        return await self.aclose(drain=True, timeout=timeout)

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> list[tuple[int, Any]]:
        """With ``drain``, wait up to ``timeout`` seconds for accepted messages to be acknowledged (announced
        as in maintenance meanwhile); then :meth:`close` and return what was not."""
        if drain:
            self._leaving()
        if drain and self.protocol is not None and not self._closed:
            with contextlib.suppress(RequestTimeout):
                await self.join(timeout)
        return self.close()


class Worker(_Driven, WorkerCore):
    """The asyncio twin of :class:`zmqkit.patterns.Worker`: the handler may be ``async def``; ``concurrency``
    handlers run at once on the event loop.

    >>> async def thumbnail(path): ...                                   # doctest: +SKIP
    >>> await Worker(thumbnail, connect="tcp://queue:5555", concurrency=8).run()
    """

    _ASYNC = True

    def _setup(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[Lane, Any, WorkerProtocol, Task]] | None = None

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> Worker:
        """Run as a task on the running event loop; return self."""
        if self._closed:
            raise self._closed_error()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._main())
        return self

    async def run(self, timeout: float | None = None) -> None:
        """Work until stopped, SIGTERM or Ctrl-C (or ``timeout`` seconds), then stop gracefully and close."""
        timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
        try:
            self.start()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)  # type: ignore[arg-type]
        finally:
            await self.aclose(timeout=self.stop_timeout + 5)
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is in hand, acknowledge it; wait up to ``timeout`` seconds."""
        timeout = check_timeout(timeout, allow_zero=True)
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def close(self) -> None:
        """Stop at once, dropping work in hand (the producer gives it to another worker), and close the
        sockets; idempotent."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            if self._task is not None:
                self._task.cancel()
            self._close_sockets()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """With ``drain``, :meth:`stop` (finish and acknowledge what is in hand, up to ``timeout`` seconds);
        then :meth:`close`."""
        if drain and not self._closed:
            await self.stop(timeout)
        self.close()

    async def _call(self, value: Any) -> Any:
        result = self.handler(value)
        return await result if inspect.isawaitable(result) else result

    async def _main(self) -> None:
        (lane,) = self.lanes
        if not self.acks:
            return await self._plain(lane)
        queue = self._queue = asyncio.Queue()
        consumers = [asyncio.ensure_future(self._consume(queue)) for _ in range(self.concurrency)]
        try:
            await self._run(self._lane(lane))
        finally:
            for fut in consumers:
                fut.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)

    async def _perform_run(self, run: Run) -> None:
        assert self._queue is not None
        for task in run.tasks:
            self._queue.put_nowait((run.lane, run.sock, run.proto, task))

    async def _consume(self, queue: asyncio.Queue[tuple[Lane, Any, WorkerProtocol, Task]]) -> None:
        while True:
            lane, sock, proto, task = await queue.get()
            try:
                result, exc = await self._call(self._value(task)), None
            except Exception as e:
                result, exc = None, e
            self._outcome(lane, proto, task, result, exc)
            if queue.empty() or proto.unflushed >= 64:  # batch acks while a backlog is being worked off
                for out in proto.flush():
                    await self._perform(Send(sock, out))

    async def _plain(self, lane: Lane) -> None:
        (sock,) = lane.socks
        following = lane.following
        while not self._stop.is_set():
            if following is not None and following.members.version != following.version:
                self._follow_plain(lane)
            if not await sock.poll(100):
                continue
            for (frame,) in await _drain(sock):
                value = self._fire_and_forget(frame)
                if value is MALFORMED:
                    continue
                try:
                    result, exc = await self._call(value), None
                except Exception as e:
                    result, exc = None, e
                self._plain_outcome(lane, result, exc)


class Sink(SinkCore):
    """The asyncio twin of :class:`zmqkit.patterns.Sink`."""

    _ASYNC = True

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close (a sink has no work in flight to drain; the arguments are those of every asyncio class)."""
        self.close()

    async def results(self, timeout: float | None = None) -> AsyncIterator[Result]:
        """Yield results as they arrive; stop when none came for ``timeout`` seconds (None: no limit)."""
        while await self._sock.poll(self._wait_ms(timeout)):
            result = self._decode(await self._sock.recv_multipart())
            if result is not None:
                yield result
