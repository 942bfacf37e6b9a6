"""Presence fabric runners: Presence announces services with heartbeats; Directory keeps the live table.

Both ride on fanout: connect them to one another directly (one side binds), or to a Forwarder (Presence to its
XSUB endpoint, Directory to its XPUB endpoint; with a last-value cache a new Directory fills at once).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from zmqkit.errors import ConfigurationError, RequestTimeout
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions

from .._background import Background
from ..fanout.protocol import new_id
from ..fanout.sync import Endpoints, Publisher, Subscriber, check_timeout
from .protocol import TOPIC_PREFIX, Announcements, DirectoryTable, Entry, check_announcement

__all__ = ["Presence", "Directory", "Entry"]

log = logging.getLogger(__name__)
Watcher = Callable[[str, Entry], object]


class Presence:
    """Announces services on a fabric and keeps them alive with heartbeats (from a background thread).

    >>> with Presence("tcp://fabric:5557") as presence:
    ...     presence.announce("orders", "tcp://10.0.0.5:6000", meta={"queue": "pipeline"})
    ...     presence.announce("orders", "tcp://10.0.0.5:6000", status="maintenance")
    ... # leaving the block announces "down": directories drop the entry at once
    """

    def __init__(
        self,
        fabric: Endpoints = None,
        *,
        bind: Endpoints = None,
        interval: float = 1.0,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = new_id().hex()
        self._state = Announcements(self.node, interval, clock)
        self._publisher = Publisher(bind, connect=fabric, codec="json", options=options, curve=curve)
        self.endpoints = self._publisher.endpoints
        self._joined = threading.Condition()
        self._directories = 0
        # The publisher's socket belongs to the thread from here on; announce() talks to it over a PAIR.
        self._background = Background(
            "presence",
            {self._publisher._sock: self._on_notice},
            on_command=self._on_command,
            tick=self._tick,
            on_stop=self._goodbye,
            linger_ms=1000,
        )

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def announce(self, service: str, endpoint: str, status: str = "up", meta: dict[str, Any] | None = None) -> None:
        """Announce (or change) ``service`` at ``endpoint``; ``down`` withdraws it at once everywhere."""
        fields = check_announcement(service, endpoint, status, meta)
        try:
            payload = json.dumps(fields).encode()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad meta {meta!r}: not JSON-serialisable ({exc})") from None
        self._background.command(payload)

    def _on_command(self, frames: list[bytes]) -> None:
        topic, body = self._state.announce(json.loads(frames[0]))
        self._publisher.publish(topic, body)

    def _on_notice(self, frames: list[bytes]) -> None:
        # A directory (or a forwarder on its behalf) just subscribed: tell it everything now, not at the next
        # heartbeat, so nothing announced before it connected is missing from its table.
        if self._publisher._notice(frames):
            for topic, body in self._state.current():
                self._publisher.publish(topic, body)
        with self._joined:
            self._directories = self._publisher._counter.count
            self._joined.notify_all()

    def wait_for_directories(self, n: int = 1, timeout: float = 10.0) -> int:
        """Block until ``n`` directories listen (directly, or through the forwarder this Presence feeds)."""
        check_timeout(timeout)
        with self._joined:
            if not self._joined.wait_for(lambda: self._directories >= n, timeout):
                raise RequestTimeout(f"only {self._directories} of {n} directories joined {self.endpoints}")
            return self._directories

    def _tick(self) -> float:
        for topic, body in self._state.due():
            self._publisher.publish(topic, body)
        return self._state.wait()

    def _goodbye(self) -> None:
        for topic, body in self._state.withdraw():
            self._publisher.publish(topic, body)

    def close(self) -> None:
        """Announce ``down`` for every service, then stop."""
        self._background.stop()
        self._publisher.close()

    def __enter__(self) -> Presence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Directory:
    """The live table of services on a fabric: lookups, waits and change callbacks.

    >>> with Directory("tcp://fabric:5558") as directory:
    ...     entry = directory.wait("orders", timeout=5)       # the first "up" instance
    ...     directory.lookup("orders")                        # every live instance, up ones first
    ...     directory.watch(lambda event, entry: print(event, entry.service, entry.status))
    """

    # How often (real seconds) the thread looks for expired entries; expiry itself runs on ``clock``.
    sweep_interval = 0.1

    def __init__(
        self,
        fabric: Endpoints = None,
        *,
        bind: Endpoints = None,
        misses: float = 3,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = DirectoryTable(misses, clock)
        self._changed = threading.Condition()
        self._watchers: list[Watcher] = []
        self._subscriber = Subscriber(fabric, [TOPIC_PREFIX], bind=bind, options=options, curve=curve)
        self.endpoints = self._subscriber.endpoints
        self._background = Background("directory", {self._subscriber._sock: self._on_message}, tick=self._sweep)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @property
    def malformed(self) -> int:
        """Announcements dropped as malformed (bad frames or bad fields)."""
        return self._table.malformed + self._subscriber.malformed

    def _on_message(self, frames: list[bytes]) -> None:
        msg = self._subscriber._feed(frames)
        if msg is not None:
            with self._changed:
                events = self._table.apply(msg.body)
            self._publish(events)

    def _sweep(self) -> float:
        with self._changed:
            events = self._table.expire()
        self._publish(events)
        return self.sweep_interval

    def _publish(self, events: list[tuple[str, Entry]]) -> None:
        if not events:
            return
        with self._changed:
            self._changed.notify_all()
            watchers = list(self._watchers)
        for kind, entry in events:
            for watcher in watchers:
                try:
                    watcher(kind, entry)
                except Exception:
                    log.exception("directory watcher %r failed", watcher)

    def lookup(self, service: str | None = None, status: str | None = None) -> list[Entry]:
        """Live instances of ``service`` (every service when None), up ones first; [] when none."""
        with self._changed:
            return self._table.lookup(service, status)

    def wait(self, service: str, timeout: float = 10.0, status: str | None = "up") -> Entry:
        """Block until ``service`` has a live instance (of ``status``; None: any) and return it."""
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._table.lookup(service, status)
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._not_found(service, status)
                self._changed.wait(remaining)

    def _not_found(self, service: str, status: str | None) -> RequestTimeout:
        return RequestTimeout(f"no {status or 'live'} instance of {service!r} announced on {self.endpoints}")

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(event, entry)`` on added/changed/removed/expired (in the directory's thread).

        Entries already known are replayed as "added" first. Returns a function that stops the watching.
        """
        if not callable(callback):
            raise ConfigurationError(f"bad watch callback {callback!r}: expected a callable")
        with self._changed:
            self._watchers.append(callback)
            known = self._table.lookup()
        for entry in known:
            callback("added", entry)

        def unwatch() -> None:
            with self._changed:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def close(self) -> None:
        self._background.stop()
        self._subscriber.close()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
