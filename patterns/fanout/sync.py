"""Fanout runners: Publisher (XPUB), Subscriber (SUB) and Forwarder (XSUB/XPUB proxy, optional last-value cache).

All framing, filtering and sequence accounting lives in :mod:`.protocol`; the sync classes here and their
asyncio twins (``zmqkit.asyncio``) share one base each and differ only in the socket calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq
from cachetools import LRUCache

from zmqkit.checks import check_timeout as _check_timeout
from zmqkit.codecs import Codec
from zmqkit.errors import ConfigurationError, RequestTimeout
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, attach, make_socket, resolve_options

from .._background import Background
from .protocol import (
    HELLO_PREFIX,
    MAX_TOPICS,
    Message,
    PublisherState,
    SubscriberCounter,
    SubscriberState,
    TopicFilter,
    new_id,
)

__all__ = ["Publisher", "Subscriber", "Forwarder", "Message", "check_timeout", "timeout_ms"]

log = logging.getLogger(__name__)
Endpoints = str | list[str] | tuple[str, ...] | None


def timeout_ms(deadline: float) -> int:
    """Milliseconds left until ``deadline`` (monotonic seconds), never negative."""
    return max(0, int((deadline - time.monotonic()) * 1000))


class _PublisherBase:
    """Everything a publisher does except the socket calls."""

    _asyncio = False

    def __init__(
        self,
        bind: Endpoints = None,
        *,
        connect: Endpoints = None,
        codec: str | Codec = "auto",
        max_topics: int = MAX_TOPICS,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        self._state = PublisherState(codec, max_topics=max_topics)
        self._counter = SubscriberCounter()
        self.id = self._state.id
        self._sock = make_socket("xpub", resolve_options(options, curve), asyncio=self._asyncio)
        self.endpoints = attach(self._sock, bind, connect, "Publisher")
        self._encode = self._state.encode
        # Notices are read without blocking through a plain view of the socket (the same socket, same thread).
        self._sync_view = zmq.Socket.shadow(self._sock.underlying) if self._asyncio else self._sock

    @property
    def endpoint(self) -> str:
        """The first endpoint (the real one, when bound to port 0)."""
        return self.endpoints[0]

    def published(self, topic: str | bytes) -> int:
        """How many messages this publisher sent on ``topic``."""
        return self._state.published(topic)

    def _notice(self, frames: list[bytes]) -> bool:
        """Take one subscription notice; True when a new zmqkit subscriber joined."""
        return self._counter.feed(frames[0])

    def _drain(self) -> None:
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

    def _waiting(self, n: int, timeout: float) -> Iterator[int]:
        """Yield how long to poll for notices, until ``n`` subscribers are in; RequestTimeout at the deadline.

        The sync and asyncio ``wait_for_subscribers`` both drive this, each with its own ``poll``.
        """
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            if self._counter.count >= n:
                return
            if time.monotonic() >= deadline:
                raise self._not_enough(n, timeout)
            yield timeout_ms(deadline)

    def _not_enough(self, n: int, timeout: float) -> RequestTimeout:
        return RequestTimeout(
            f"only {self._counter.count} of {n} subscribers joined {self.endpoints} within {timeout}s; "
            "check that they connect to this endpoint (or to the forwarder this publisher feeds)"
        )

    def close(self) -> None:
        """Close the socket (queued messages get ``linger_ms`` to go out)."""
        if not self._sock.closed:
            self._sock.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id.hex()} {self.endpoints}>"


def check_timeout(timeout: float | None) -> None:
    """Fanout waits take 0 too: look once, do not wait."""
    _check_timeout(timeout, allow_zero=True)


class Publisher(_PublisherBase):
    """Broadcasts ``[topic, body]`` with a sequence number per topic; sees who subscribed.

    >>> with Publisher("tcp://127.0.0.1:0") as pub:
    ...     pub.wait_for_subscribers(1, timeout=5)   # no lost first message
    ...     pub.publish("orders.7.paid", {"total": 12})
    """

    def publish(self, topic: str | bytes, body: Any) -> None:
        """Send ``body`` on ``topic``; never blocks (a subscriber at its high-water mark misses it)."""
        topic_frame, data = self._encode(topic, body)
        self._sock.send(topic_frame, zmq.SNDMORE)
        self._sock.send(data)

    def wait_for_subscribers(self, n: int = 1, timeout: float = 10.0) -> int:
        """Block until ``n`` zmqkit subscribers have subscribed (their topics are then in effect)."""
        for wait_ms in self._waiting(n, timeout):
            self._sock.poll(wait_ms)
        return self._counter.count


class _SubscriberBase:
    """Everything a subscriber does except the socket calls."""

    _asyncio = False

    def __init__(
        self,
        endpoints: Endpoints = None,
        topics: Iterable[str | bytes] | str = ("",),
        *,
        bind: Endpoints = None,
        allow_pickle: bool = False,
        max_topics: int = MAX_TOPICS,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        self._state = SubscriberState(TopicFilter(topics), allow_pickle=allow_pickle, max_topics=max_topics)
        self._feed = self._state.feed
        self._feed_pair = self._state.feed_pair
        self.id = new_id()
        self._sock = make_socket("sub", resolve_options(options, curve), asyncio=self._asyncio)
        for prefix in sorted(self._state.filter.prefixes):
            self._sock.subscribe(prefix)
        # Last, so a publisher that sees it knows the topics above are already in effect.
        self._sock.subscribe(HELLO_PREFIX + self.id)
        self.endpoints = attach(self._sock, bind, endpoints, "Subscriber")

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

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

    def _timeout(self, timeout: float) -> RequestTimeout:
        return RequestTimeout(f"no message from {self.endpoints} within {timeout}s")

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoints} {self.stats()}>"


class Subscriber(_SubscriberBase):
    """Receives from one or more publishers (or a forwarder), by iteration, ``recv()`` or a callback.

    Topics are prefixes, or NATS-style subjects with ``*`` (one token) and ``>`` (the rest).

    >>> with Subscriber("tcp://127.0.0.1:5556", topics=["orders.*.paid", "logs.>"]) as sub:
    ...     msg = sub.recv(timeout=5)          # Message(topic, body, publisher, seq)
    ...     print(msg.topic, msg.body, sub.missed)
    """

    def __init__(
        self,
        endpoints: Endpoints = None,
        topics: Iterable[str | bytes] | str = ("",),
        *,
        callback: Callable[[Message], object] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(endpoints, topics, **kwargs)
        self._background: Background | None = None
        if callback is not None:
            if not callable(callback):
                self.close()
                raise ConfigurationError(f"bad callback {callback!r}: expected a callable")

            def handle(frames: list[bytes]) -> None:
                msg = self._feed(frames)
                if msg is not None:
                    callback(msg)

            # From here on the socket belongs to the background thread.
            self._background = Background("subscriber", {self._sock: handle})

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; RequestTimeout when none comes within ``timeout`` seconds (None: wait)."""
        self._no_callback()
        read = self._read
        if timeout is None:
            while True:
                msg = read(0)
                if msg is not None:
                    return msg
        check_timeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = read(zmq.NOBLOCK)
            except zmq.Again:
                if not self._sock.poll(timeout_ms(deadline)) and time.monotonic() >= deadline:
                    raise self._timeout(timeout) from None
                continue
            if msg is not None:
                return msg

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, forever."""
        self._no_callback()
        read = self._read
        while True:
            msg = read(0)
            if msg is not None:
                yield msg

    def _read(self, flags: int) -> Message | None:
        """Receive one message frame by frame: cheaper than recv_multipart for the usual two frames."""
        recv, more = self._sock.recv, self._sock.getsockopt
        topic = recv(flags)
        if not more(zmq.RCVMORE):
            return self._feed([topic])
        data = recv()
        if not more(zmq.RCVMORE):
            return self._feed_pair(topic, data)
        return self._feed([topic, data, *self._sock.recv_multipart()])

    def _no_callback(self) -> None:
        if self._background is not None:
            raise ConfigurationError("this Subscriber delivers to its callback; recv() and iteration are not available")

    def close(self) -> None:
        if self._background is not None:
            self._background.stop()
        super().close()


class Forwarder:
    """Where many publishers (connect to ``xsub``) and subscribers (connect to ``xpub``) meet.

    Plain mode is libzmq's steerable proxy in a thread. With ``last_value_cache=N`` a Python loop also keeps
    the latest message of up to N topics and sends it to a subscriber the moment it subscribes.

    >>> with Forwarder("tcp://*:5557", "tcp://*:5558", last_value_cache=10_000) as fwd:
    ...     fwd.join()
    """

    def __init__(
        self,
        xsub: str = "tcp://127.0.0.1:0",
        xpub: str = "tcp://127.0.0.1:0",
        *,
        last_value_cache: int = 0,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        if not isinstance(last_value_cache, int) or isinstance(last_value_cache, bool) or last_value_cache < 0:
            raise ConfigurationError(f"bad last_value_cache {last_value_cache!r}: expected a topic count >= 0")
        opts = resolve_options(options, curve)
        self._xsub = make_socket("xsub", opts)
        self.xsub_endpoint = attach(self._xsub, xsub, None, "Forwarder")[0]
        self._xpub = make_socket("xpub", opts)
        try:
            self.xpub_endpoint = attach(self._xpub, xpub, None, "Forwarder")[0]
        except BaseException:
            self._xsub.close(linger=0)
            raise
        self._cache: LRUCache[bytes, list[bytes]] | None = None
        if last_value_cache:
            self._cache = LRUCache(maxsize=last_value_cache)
            self._background = Background(
                "forwarder-lvc", {self._xsub: self._from_publishers, self._xpub: self._from_subscribers}
            )
        else:
            # libzmq's proxy moves both ways in C; TERMINATE on the control pair ends it.
            self._background = Background("forwarder", {}, run=self._run_proxy, owned=(self._xsub, self._xpub))

    def _run_proxy(self, control: Any) -> None:
        zmq.proxy_steerable(self._xsub, self._xpub, None, control)

    # Last-value-cache mode.
    def _from_publishers(self, frames: list[bytes]) -> None:
        assert self._cache is not None
        self._cache[frames[0]] = frames
        self._xpub.send_multipart(frames)

    def _from_subscribers(self, frames: list[bytes]) -> None:
        assert self._cache is not None
        notice = frames[0]
        self._xsub.send(notice)  # subscriptions travel upstream to the publishers, as in the proxy
        if notice[:1] == b"\x01" and not notice.startswith(HELLO_PREFIX, 1):
            prefix = notice[1:]
            # The new subscription is in effect on the XPUB now, so this reaches the newcomer; others that
            # already got the same zmqkit message drop it as a duplicate by its sequence number.
            for topic, message in list(self._cache.items()):
                if topic.startswith(prefix):
                    self._xpub.send_multipart(message)

    @property
    def cached_topics(self) -> int:
        return 0 if self._cache is None else len(self._cache)

    def join(self, timeout: float | None = None) -> None:
        """Block until the forwarder stops (``close()`` from another thread, or Ctrl-C)."""
        self._background.join(timeout)

    def close(self) -> None:
        """Stop the proxy thread; it closes its sockets."""
        self._background.stop()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Forwarder xsub={self.xsub_endpoint} xpub={self.xpub_endpoint} lvc={self._cache is not None}>"
