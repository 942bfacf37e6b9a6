"""asyncio twins of the fanout runners: the bases of :mod:`.base` with awaitable socket calls.

``zmqkit.asyncio`` exports them under the sync names (Publisher, Subscriber). The Forwarder runs in its own
thread and has nothing to await, so ``zmqkit.asyncio`` re-exports it as it is.

Closing: ``close()`` closes at once; ``await aclose()`` (and ``async with``) is the asyncio way. A call waiting
on a socket when it closes raises :class:`~zmqkit.Closed` (pyzmq cancels the socket's pending futures; a
cancellation that the task did not ask for is turned into Closed here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from zmqkit.checks import check_timeout, to_ms
from zmqkit.errors import Closed

from .base import PublisherBase, SubscriberBase
from .protocol import Message

__all__ = ["AsyncPublisher", "AsyncSubscriber"]


def _closed_under(task_cancelled: asyncio.CancelledError, closed: bool, error: Closed) -> BaseException:
    """The error for a wait that pyzmq cancelled: Closed when the socket was closed and the task not cancelled."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None and hasattr(task, "cancelling") else 0
    return error if closed and not cancelling else task_cancelled


class AsyncPublisher(PublisherBase):
    """:class:`zmqkit.patterns.Publisher` for asyncio.

    >>> async with AsyncPublisher("tcp://127.0.0.1:0") as pub:
    ...     await pub.wait_for_subscribers(1, timeout=5)
    ...     await pub.publish("orders.7.paid", {"total": 12})
    """

    _asyncio = True

    async def publish(self, topic: str | bytes, body: Any) -> None:
        """Send ``body`` on ``topic``; never waits for a subscriber (one at its high-water mark misses it)."""
        try:
            await self._sock.send_multipart(self._encode(topic, body))
        except zmq.ZMQError as exc:
            raise self._failed(exc) from None

    async def wait_for_subscribers(self, n: int = 1, timeout: float | None = 10.0) -> int:
        """Wait until ``n`` zmqkit subscribers have subscribed.

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed if closed meanwhile.
        """
        try:
            for wait_ms in self._waiting(n, timeout):
                await self._sock.poll(wait_ms)
        except asyncio.CancelledError as exc:
            raise _closed_under(exc, self._sock.closed, self._closed_error()) from None
        return self._counter.count

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close; with ``drain``, messages still queued get up to ``timeout`` seconds (None: no limit) to go out.

        Publishing never waits, so there is no call in flight to finish: what drains is the socket's queue,
        in libzmq's I/O thread (this returns at once). Without ``drain`` queued messages are dropped.
        """
        self._shut(to_ms(check_timeout(timeout, allow_zero=True)) if drain else 0)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncSubscriber(SubscriberBase):
    """:class:`zmqkit.patterns.Subscriber` for asyncio: ``await sub.recv(timeout=...)`` or ``async for``.

    >>> async with AsyncSubscriber(endpoint, topics=["logs.>"]) as sub:
    ...     async for msg in sub:
    ...         print(msg.topic, msg.body)
    """

    _asyncio = True

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; RequestTimeout when none comes within ``timeout`` seconds (None: no limit).

        Closed when the subscriber is (or gets) closed. Cancelling the call loses no message.
        """
        sock, waits, following = self._sock, self._polls(timeout), self._following
        try:
            while True:
                if following is not None and following.members.version != following.version:
                    self._follow()
                try:
                    frames = await sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    await sock.poll(next(waits))
                    continue
                msg = self._feed(frames)
                if msg is not None:
                    return msg
        except zmq.ZMQError as exc:
            raise self._failed(exc) from None
        except asyncio.CancelledError as exc:
            raise _closed_under(exc, self._closed, self._closed_error()) from None

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Message:
        return await self.recv()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close: a subscriber has no work in flight, so ``drain`` and ``timeout`` change nothing here.

        They are accepted so every zmqkit asyncio class closes the same way. Calls waiting in ``recv()`` raise
        Closed; messages queued in the socket and not yet received are dropped.
        """
        check_timeout(timeout, allow_zero=True)
        self.close()

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
