"""Presence fabric runners: Presence announces services with heartbeats; Directory keeps the live table.

Both ride on fanout: connect them to one another directly (one side binds), or to a Forwarder (Presence to its
XSUB endpoint, Directory to its XPUB endpoint; with a last-value cache a new Directory fills at once).
Everything but the blocking waits is in :mod:`.base`, shared with the asyncio twins in :mod:`.aio`.
"""

from __future__ import annotations

from .base import DirectoryBase, PresenceBase, block
from .protocol import Entry

__all__ = ["Presence", "Directory", "Entry"]


class Presence(PresenceBase):
    """Announces services on a fabric and keeps them alive with heartbeats (from a background thread).

    >>> with Presence("tcp://fabric:5557") as presence:
    ...     presence.announce("orders", "tcp://10.0.0.5:6000", meta={"queue": "pipeline"})
    ...     presence.announce("orders", "tcp://10.0.0.5:6000", status="maintenance")
    ... # leaving the block announces "down": directories drop the entry at once
    """

    def wait_for_directories(self, n: int = 1, timeout: float | None = 10.0) -> int:
        """Block until ``n`` directories listen (directly, or through the forwarder this Presence feeds).

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed if closed meanwhile.
        """
        return block(self._changes, self._directory_steps(n, timeout))

    def __enter__(self) -> Presence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Directory(DirectoryBase):
    """The live table of services on a fabric: lookups, waits and change callbacks.

    >>> with Directory("tcp://fabric:5558") as directory:
    ...     entry = directory.wait("orders", timeout=5)       # the first "up" instance
    ...     directory.lookup("orders")                        # every live instance, up ones first
    ...     directory.watch(lambda event, entry: print(event, entry.service, entry.status))
    """

    def wait(self, service: str, timeout: float | None = 10.0, status: str | None = "up") -> Entry:
        """Block until ``service`` has a live instance (of ``status``; None: any) and return it.

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed if closed meanwhile.
        """
        return block(self._changes, self._wait_steps(service, timeout, status))

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
