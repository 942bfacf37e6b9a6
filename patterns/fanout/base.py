"""What a fanout Publisher and Subscriber do apart from the socket calls, once for the sync and asyncio runners.

``sync.py`` and ``aio.py`` subclass these bases and add only the methods that touch the socket (publish,
receive, poll); the deadlines, notice counting, errors and closing live here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import zmq

from zmqkit.checks import check_timeout, to_ms
from zmqkit.codecs import Codec
from zmqkit.endpoints import parse_endpoints
from zmqkit.errors import Closed, ConfigurationError, RequestTimeout, ZmqkitError
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, attach, connect, make_socket, resolve_options

from .._follow import announcer, following

if TYPE_CHECKING:  # presence imports this module
    from ..presence.fabric import FabricLike

from .protocol import HELLO_PREFIX, MAX_TOPICS, PublisherState, SubscriberCounter, SubscriberState, TopicFilter, new_id

__all__ = ["Endpoints", "PublisherBase", "SubscriberBase", "polls"]

Endpoints = str | list[str] | tuple[str, ...] | None
_FOLLOW_MS = 100  # a subscriber following a service looks at its membership at least this often while waiting


def polls(timeout: float | None, expired: Callable[[], ZmqkitError]) -> Iterator[int]:
    """Milliseconds to wait for input, round after round (-1: no limit); raises ``expired()`` past the deadline.

    The first round always comes, so ``timeout=0`` looks once without waiting.
    """
    limit = check_timeout(timeout, allow_zero=True)
    if limit is None:
        while True:
            yield -1
    deadline = time.monotonic() + limit
    left = limit
    while True:
        yield to_ms(left)
        left = deadline - time.monotonic()
        if left <= 0:
            raise expired()


class PublisherBase:
    """A publisher's state and bookkeeping; the runner subclasses add ``publish`` and ``wait_for_subscribers``."""

    _asyncio = False

    def __init__(
        self,
        bind: Endpoints = None,
        *,
        connect: Endpoints = None,
        codec: str | Codec = "auto",
        max_topics: int = MAX_TOPICS,
        announce: str | None = None,
        advertise: str | None = None,
        fabric: FabricLike = None,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        self._state = PublisherState(codec, max_topics=max_topics)
        self._counter = SubscriberCounter()
        self.id = self._state.id
        self._sock = make_socket("xpub", resolve_options(options, curve), asyncio=self._asyncio)
        self._refusals = Refusals()
        self._refusals.watch(self._sock)
        self.endpoints = attach(self._sock, bind, connect, "Publisher")
        self._encode = self._state.encode
        # Notices are read without blocking through a plain view of the socket (the same socket, same thread).
        self._sync_view = zmq.Socket.shadow(self._sock.underlying) if self._asyncio else self._sock
        bound = self.endpoints[: len(parse_endpoints(bind, for_bind=True)) if bind else 0]
        try:
            self._announcer = announcer("Publisher", announce, fabric, bound, advertise, {"kind": "fanout"})
        except BaseException:
            self._sock.close(linger=0)
            raise

    @property
    def endpoint(self) -> str:
        """The first endpoint (the real one, when bound to port 0)."""
        return self.endpoints[0]

    @property
    def closed(self) -> bool:
        return bool(self._sock.closed)

    def published(self, topic: str | bytes) -> int:
        """How many messages this publisher sent on ``topic``."""
        return self._state.published(topic)

    def stats(self) -> dict[str, int]:
        """Subscribers (as the last look at notices found them; this does not read the socket, so any thread may
        ask) and refused CURVE handshakes."""
        return {"subscribers": self._counter.count, "auth_failures": self._refusals.count}

    def _notice(self, frames: list[bytes]) -> bool:
        """Take one subscription notice; True when a new zmqkit subscriber joined."""
        return self._counter.feed(frames[0])

    def _drain(self) -> None:
        if self._sock.closed:
            raise self._closed_error()
        while True:
            try:
                self._notice(self._sync_view.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return

    @property
    def subscribers(self) -> int:
        """How many zmqkit subscribers are connected right now (as far as notices have told)."""
        self._drain()
        return self._counter.count

    def _waiting(self, n: int, timeout: float | None) -> Iterator[int]:
        """Yield how long to poll for notices, until ``n`` subscribers are in; RequestTimeout at the deadline."""
        for wait_ms in polls(timeout, lambda: self._not_enough(n, timeout)):
            self._drain()
            if self._counter.count >= n:
                return
            yield wait_ms

    def _not_enough(self, n: int, timeout: float | None) -> RequestTimeout:
        return RequestTimeout(
            f"only {self._counter.count} of {n} subscribers joined {self.endpoints} within {timeout}s; "
            "check that they connect to this endpoint (or to the forwarder this publisher feeds)"
        )

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} {self.endpoints} is closed")

    def _failed(self, exc: zmq.ZMQError) -> ZmqkitError:
        """What a failed socket call means to the caller (it only fails on a closed socket or context)."""
        if self._sock.closed or isinstance(exc, zmq.ContextTerminated) or exc.errno == zmq.ENOTSOCK:
            return self._closed_error()
        return ZmqkitError(f"{type(self).__name__} {self.endpoints}: {exc}")

    def close(self) -> None:
        """Close the socket at once (queued messages get the socket's ``linger_ms`` to go out); idempotent.
        An announced publisher says maintenance, then down once closed."""
        self._shut(None)

    def _shut(self, linger: int | None) -> None:
        if self._announcer is not None:
            self._announcer.maintenance()
        if not self._sock.closed:
            self._sock.close(linger=linger)
        if self._announcer is not None:
            self._announcer.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id.hex()} {self.endpoints}>"


class SubscriberBase:
    """A subscriber's socket set-up, counters and deadlines; the runner subclasses add ``recv`` and iteration."""

    _asyncio = False

    def __init__(
        self,
        endpoints: Endpoints = None,
        topics: Iterable[str | bytes] | str = ("",),
        *,
        bind: Endpoints = None,
        allow_pickle: bool = False,
        max_topics: int = MAX_TOPICS,
        service: str | None = None,
        fabric: FabricLike = None,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        if service is not None and bind:
            raise ConfigurationError(
                f"Subscriber: service={service!r} with bind={bind!r}: a subscriber finds publishers"
            )
        self._state = SubscriberState(TopicFilter(topics), allow_pickle=allow_pickle, max_topics=max_topics)
        self._feed = self._state.feed
        self._feed_pair = self._state.feed_pair
        self.id = new_id()
        self._closed = False
        self._sock = make_socket("sub", resolve_options(options, curve), asyncio=self._asyncio)
        for prefix in sorted(self._state.filter.prefixes):
            self._sock.subscribe(prefix)
        # Last, so a publisher that sees it knows the topics above are already in effect.
        self._sock.subscribe(HELLO_PREFIX + self.id)
        try:
            self._following = following("Subscriber", service, fabric, endpoints)
        except BaseException:
            self._sock.close(linger=0)
            raise
        # Following a service: the endpoints are its publishers, connected as they come (see _follow).
        self.endpoints = attach(self._sock, bind, endpoints, "Subscriber") if self._following is None else []

    @property
    def service(self) -> str | None:
        """The service whose publishers this subscriber follows (None: fixed endpoints)."""
        return None if self._following is None else self._following.members.service

    def _follow(self) -> None:
        """Connect to the service's publishers that joined, disconnect from gone ones (between receives)."""
        assert self._following is not None
        added, gone = self._following.changes()
        for endpoint in added:
            connect(self._sock, endpoint)
        for endpoint in gone:
            with contextlib.suppress(zmq.ZMQError):  # never connected: nothing to undo
                self._sock.disconnect(endpoint)
        self.endpoints = sorted(self._following.attached)

    def _tick(self) -> float:
        """The callback thread's look at membership, between batches of messages."""
        following = self._following
        if following is not None and following.members.version != following.version:
            self._follow()
        return _FOLLOW_MS / 1000

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def missed(self) -> int:
        """Messages this subscriber knows it did not get (high-water-mark drops + sent before it joined)."""
        return self._state.missed

    @property
    def gaps(self) -> int:
        """Holes inside a publisher's topic stream: dropped at a high-water mark."""
        return self._state.gaps

    @property
    def malformed(self) -> int:
        """Messages dropped because their frames did not follow the wire format."""
        return self._state.malformed

    def stats(self) -> dict[str, int]:
        """All counters: received, missed, gaps, joined_late, duplicates, malformed, filtered, restarts, forgotten."""
        return self._state.stats()

    def _polls(self, timeout: float | None) -> Iterator[int]:
        """How long to wait before each look for a message; Closed when closed, RequestTimeout at the deadline."""
        if self._closed:
            raise self._closed_error()
        waits = polls(timeout, lambda: RequestTimeout(f"no message from {self._where()} within {timeout}s"))
        if self._following is None:
            return waits
        # Following: wake up often enough to connect a publisher that joins while nothing arrives.
        return (_FOLLOW_MS if ms < 0 or ms > _FOLLOW_MS else ms for ms in waits)

    def _where(self) -> str:
        return str(self.endpoints) if self._following is None else f"service {self.service!r} {self.endpoints}"

    def _closed_error(self) -> Closed:
        return Closed(f"{type(self).__name__} {self._where()} is closed")

    def _failed(self, exc: zmq.ZMQError) -> ZmqkitError:
        """What a failed socket call means to the caller (it only fails on a closed socket or context)."""
        if self._closed or isinstance(exc, zmq.ContextTerminated) or exc.errno == zmq.ENOTSOCK:
            return self._closed_error()
        return ZmqkitError(f"{type(self).__name__} {self.endpoints}: {exc}")

    def close(self) -> None:
        """Close the socket at once, dropping what is queued; idempotent."""
        self._closed = True
        if not self._sock.closed:
            self._sock.close(linger=0)
        if self._following is not None:
            self._following.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoints} {self.stats()}>"
