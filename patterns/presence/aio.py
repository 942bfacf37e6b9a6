"""asyncio twins of the presence runners: the directory's wait and the presence's wait are coroutines.

``zmqkit.asyncio`` exports them under the sync names (Directory, Presence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..fanout.sync import check_timeout
from .protocol import Entry
from .sync import Directory, Presence

__all__ = ["AsyncDirectory", "AsyncPresence"]


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
