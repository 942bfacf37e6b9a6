"""asyncio twins of the fanout runners: the same bases as the sync classes, with awaitable socket calls.

``zmqkit.asyncio`` exports them under the sync names (Publisher, Subscriber, Directory, Presence). The
Forwarder runs in its own thread and has nothing to await, so ``zmqkit.asyncio`` re-exports it as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .fanout import Message, _PublisherBase, _SubscriberBase, check_timeout, timeout_ms
from .presence import Directory, Presence
from .presence_protocol import Entry

__all__ = ["AsyncPublisher", "AsyncSubscriber", "AsyncDirectory", "AsyncPresence"]


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


class AsyncDirectory(Directory):
    """:class:`zmqkit.patterns.Directory` whose ``wait`` is a coroutine (lookups never block)."""

    async def wait(self, service: str, timeout: float = 10.0, status: str | None = "up") -> Entry:  # type: ignore[override]
        """Wait until ``service`` has a live instance (of ``status``; None: any) and return it."""
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        unwatch = self.watch(lambda event, entry: loop.call_soon_threadsafe(changed.set))
        deadline = time.monotonic() + timeout
        try:
            while True:
                found = self.lookup(service, status)
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._not_found(service, status)
                changed.clear()
                # Look again at least every sweep tick: an entry may have expired on the clock meanwhile.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, self.sweep_interval))
        finally:
            unwatch()

    async def __aenter__(self) -> AsyncDirectory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncPresence(Presence):
    """:class:`zmqkit.patterns.Presence` whose ``wait_for_directories`` is a coroutine (announce never blocks)."""

    async def wait_for_directories(self, n: int = 1, timeout: float = 10.0) -> int:  # type: ignore[override]
        """Wait until ``n`` directories listen (the sync wait, run off the event loop)."""
        return await asyncio.to_thread(super().wait_for_directories, n, timeout)

    async def __aenter__(self) -> AsyncPresence:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
