"""asyncio twins of the presence runners: the waits are coroutines; announce and lookups never block.

``zmqkit.asyncio`` exports them under the sync names (Directory, Presence). Both keep their background thread
(it owns the fanout socket); a wait sleeps on an asyncio event that the thread sets through the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from typing import TypeVar

from zmqkit.checks import check_timeout

from .base import Changes, DirectoryBase, PresenceBase
from .protocol import Entry

__all__ = ["AsyncDirectory", "AsyncPresence"]

T = TypeVar("T")


async def _sleep_between(changes: Changes, steps: Generator[float | None, None, T]) -> T:
    """Run a wait's steps in the event loop: sleep on an event the changing thread sets."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(changed.set)

    stop = changes.add_waker(wake)
    try:
        while True:
            changed.clear()  # before the look: a change after it sets the event again
            wait = next(steps)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
    except StopIteration as done:
        return done.value
    finally:
        stop()


async def _closing(close: Callable[[], None], timeout: float | None) -> None:
    """Close off the event loop (the thread's goodbye and join), waiting at most ``timeout`` seconds for it."""
    task = asyncio.ensure_future(asyncio.to_thread(close))
    await asyncio.wait([task], timeout=check_timeout(timeout, allow_zero=True))


class AsyncPresence(PresenceBase):
    """:class:`zmqkit.patterns.Presence` whose ``wait_for_directories`` is a coroutine (announce never blocks)."""

    async def wait_for_directories(self, n: int = 1, timeout: float | None = 10.0) -> int:
        """Wait until ``n`` directories listen.

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed if closed meanwhile.
        """
        return await _sleep_between(self._changes, self._directory_steps(n, timeout))

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Announce ``down`` for every service and stop, off the event loop.

        With ``drain``, waits up to ``timeout`` seconds for the background thread to send its goodbyes and end;
        without, asks it to and returns. Waits in progress raise Closed.
        """
        await _closing(self.close, timeout if drain else 0)

    async def __aenter__(self) -> AsyncPresence:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncDirectory(DirectoryBase):
    """:class:`zmqkit.patterns.Directory` whose ``wait`` is a coroutine (lookups never block)."""

    async def wait(self, service: str, timeout: float | None = 10.0, status: str | None = "up") -> Entry:
        """Wait until ``service`` has a live instance (of ``status``; None: any) and return it.

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed if closed meanwhile.
        """
        return await _sleep_between(self._changes, self._wait_steps(service, timeout, status))

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Stop and close, off the event loop (a directory has no work in flight: ``drain`` changes nothing).

        Waits up to ``timeout`` seconds for the background thread to end. Waits in progress raise Closed.
        """
        await _closing(self.close, timeout)

    async def __aenter__(self) -> AsyncDirectory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
