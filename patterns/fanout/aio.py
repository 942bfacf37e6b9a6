"""asyncio twins of the fanout runners: the same bases as the sync classes, with awaitable socket calls.

``zmqkit.asyncio`` exports them under the sync names (Publisher, Subscriber). The
Forwarder runs in its own thread and has nothing to await, so ``zmqkit.asyncio`` re-exports it as it is.
"""

from __future__ import annotations

import time

from .sync import Message, _PublisherBase, _SubscriberBase, check_timeout, timeout_ms

__all__ = ["AsyncPublisher", "AsyncSubscriber"]


class AsyncPublisher(_PublisherBase):
    """:class:`zmqkit.patterns.Publisher` for asyncio.

    >>> async with AsyncPublisher("tcp://127.0.0.1:0") as pub:   # or: with ...
    ...     await pub.wait_for_subscribers(1, timeout=5)
    ...     await pub.publish("orders.7.paid", {"total": 12})
    """

    _asyncio = True

    async def publish(self, topic: str | bytes, body: object) -> None:
        """Send ``body`` on ``topic``; never waits for a subscriber (one at its high-water mark misses it)."""
        await self._sock.send_multipart(self._encode(topic, body))

    async def wait_for_subscribers(self, n: int = 1, timeout: float = 10.0) -> int:
        """Wait until ``n`` zmqkit subscribers have subscribed."""
        for wait_ms in self._waiting(n, timeout):
            await self._sock.poll(wait_ms)
        return self._counter.count

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber(_SubscriberBase):
    """:class:`zmqkit.patterns.Subscriber` for asyncio: ``await sub.recv(timeout=...)`` or ``async for``.

    >>> async with AsyncSubscriber(endpoint, topics=["logs.>"]) as sub:
    ...     async for msg in sub:
    ...         print(msg.topic, msg.body)
    """

    _asyncio = True

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; RequestTimeout when none comes within ``timeout`` seconds (None: wait)."""
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None and not await self._sock.poll(timeout_ms(deadline)):
                if time.monotonic() >= deadline:
                    raise self._timeout(timeout or 0)
                continue
            msg = self._feed(await self._sock.recv_multipart())
            if msg is not None:
                return msg

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Message:
        return await self.recv()

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
