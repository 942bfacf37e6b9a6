"""What Presence and Directory do, once for the sync and asyncio runners: only their waits differ.

Each runs a background thread (it owns the fanout socket) that changes some state and then calls
:meth:`Changes.notify`. A wait is the generator :meth:`Changes.steps`: it looks at the state and yields how
long to sleep until the next change; ``sync.py`` sleeps on the lock's condition, ``aio.py`` on an asyncio event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from zmqkit.checks import check_timeout
from zmqkit.errors import Closed, ConfigurationError, RequestTimeout
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions

from .._background import Background
from ..fanout.base import Endpoints
from ..fanout.protocol import new_id
from ..fanout.sync import Publisher, Subscriber
from .protocol import TOPIC_PREFIX, Announcements, DirectoryTable, Entry, check_announcement, encode_announcement

__all__ = ["Changes", "DirectoryBase", "PresenceBase", "Watcher", "block"]

log = logging.getLogger(__name__)
Watcher = Callable[[str, Entry], object]
T = TypeVar("T")


class Changes:
    """A lock over state a background thread changes, and the wake-ups of everyone waiting on it."""

    def __init__(self) -> None:
        self.lock = threading.Condition()  # re-entrant: a wait looks at the state with the lock held
        self.closed = False
        self._wakers: list[Callable[[], None]] = []

    def notify(self) -> None:
        """The state changed (or closed): wake every waiter."""
        with self.lock:
            self.lock.notify_all()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def close(self) -> bool:
        """Mark closed and wake every waiter; True the first time only."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        self.notify()
        return True

    def add_waker(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` (from the changing thread) on every change; returns the function that stops it."""
        with self.lock:
            self._wakers.append(wake)

        def remove() -> None:
            with self.lock:
                self._wakers.remove(wake)

        return remove

    def steps(
        self, ready: Callable[[], T | None], timeout: float | None, expired: Callable[[], Exception], closed: Closed
    ) -> Generator[float | None, None, T]:
        """A wait, sans-I/O: yields seconds to sleep (None: no limit) until ``ready()`` gives a value, returned.

        Raises ``closed`` once :attr:`closed`, ``expired()`` after ``timeout`` seconds (None: no limit).
        """
        limit = check_timeout(timeout, allow_zero=True)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            if self.closed:
                raise closed
            found = ready()
            if found is not None:
                return found
            if deadline is None:
                yield None
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            yield left


def block(changes: Changes, steps: Generator[float | None, None, T]) -> T:
    """Run a wait's steps (:meth:`Changes.steps`) in this thread: sleep on the condition between looks."""
    with changes.lock:
        try:
            while True:
                changes.lock.wait(next(steps))
        except StopIteration as done:
            return done.value


class PresenceBase:
    """Announces services on a fabric and keeps them alive with heartbeats (from a background thread)."""

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
        self._changes = Changes()
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

    @property
    def closed(self) -> bool:
        return self._changes.closed

    def announce(self, service: str, endpoint: str, status: str = "up", meta: dict[str, Any] | None = None) -> None:
        """Announce (or change) ``service`` at ``endpoint``; ``down`` withdraws it at once everywhere."""
        fields = check_announcement(service, endpoint, status, meta)
        payload = encode_announcement(fields)  # strict JSON, small enough for every receiver
        if self._changes.closed:
            raise self._closed_error()
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
        with self._changes.lock:
            self._directories = self._publisher._counter.count
        self._changes.notify()

    def _directory_steps(self, n: int, timeout: float | None) -> Generator[float | None, None, int]:
        """The wait for ``n`` directories (see :meth:`Changes.steps`)."""

        def not_enough() -> RequestTimeout:
            return RequestTimeout(f"only {self._directories} of {n} directories joined {self.endpoints}")

        return self._changes.steps(
            lambda: self._directories if self._directories >= n else None, timeout, not_enough, self._closed_error()
        )

    def _tick(self) -> float:
        for topic, body in self._state.due():
            self._publisher.publish(topic, body)
        return self._state.wait()

    def _goodbye(self) -> None:
        for topic, body in self._state.withdraw():
            self._publisher.publish(topic, body)

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} {self.endpoints} is closed")

    def close(self) -> None:
        """Announce ``down`` for every service, then stop (the thread ends within milliseconds); idempotent."""
        if self._changes.close():
            self._background.stop()
            self._publisher.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node} {self.endpoints}>"


class DirectoryBase:
    """The live table of services on a fabric: lookups and change callbacks; the runners add ``wait``."""

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
        self._changes = Changes()
        self._watchers: list[Watcher] = []
        self._subscriber = Subscriber(fabric, [TOPIC_PREFIX], bind=bind, options=options, curve=curve)
        self.endpoints = self._subscriber.endpoints
        self._background = Background("directory", {self._subscriber._sock: self._on_message}, tick=self._sweep)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @property
    def closed(self) -> bool:
        return self._changes.closed

    @property
    def malformed(self) -> int:
        """Announcements dropped as malformed (bad frames or bad fields)."""
        return self._table.malformed + self._subscriber.malformed

    def _on_message(self, frames: list[bytes]) -> None:
        msg = self._subscriber._feed(frames)
        if msg is not None:
            with self._changes.lock:
                events = self._table.apply(msg.body)
            self._publish(events)

    def _sweep(self) -> float:
        with self._changes.lock:
            events = self._table.expire()
        self._publish(events)
        return self.sweep_interval

    def _publish(self, events: list[tuple[str, Entry]]) -> None:
        if not events:
            return
        with self._changes.lock:
            watchers = list(self._watchers)
        self._changes.notify()
        for kind, entry in events:
            for watcher in watchers:
                try:
                    watcher(kind, entry)
                except Exception:
                    log.exception("directory watcher %r failed", watcher)

    def lookup(self, service: str | None = None, status: str | None = None) -> list[Entry]:
        """Live instances of ``service`` (every service when None), up ones first; [] when none."""
        with self._changes.lock:
            if self._changes.closed:
                raise self._closed_error()
            return self._table.lookup(service, status)

    def _wait_steps(
        self, service: str, timeout: float | None, status: str | None
    ) -> Generator[float | None, None, Entry]:
        """The wait for a live instance of ``service`` (see :meth:`Changes.steps`)."""

        def first() -> Entry | None:
            with self._changes.lock:
                found = self._table.lookup(service, status)
            return found[0] if found else None

        def not_found() -> RequestTimeout:
            return RequestTimeout(f"no {status or 'live'} instance of {service!r} announced on {self.endpoints}")

        return self._changes.steps(first, timeout, not_found, self._closed_error())

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(event, entry)`` on added/changed/removed/expired (in the directory's thread).

        Entries already known are replayed as "added" first. Returns a function that stops the watching.
        """
        if not callable(callback):
            raise ConfigurationError(f"bad watch callback {callback!r}: expected a callable")
        with self._changes.lock:
            if self._changes.closed:
                raise self._closed_error()
            self._watchers.append(callback)
            known = self._table.lookup()
        for entry in known:
            callback("added", entry)

        def unwatch() -> None:
            with self._changes.lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} {self.endpoints} is closed")

    def close(self) -> None:
        """Stop the thread and close the socket (waits reading the table raise Closed); idempotent."""
        if self._changes.close():
            self._background.stop()
            self._subscriber.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoints}>"
