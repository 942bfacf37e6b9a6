"""Fanout runners: Publisher (XPUB), Subscriber (SUB) and Forwarder (XSUB/XPUB proxy, optional last-value cache).

All framing, filtering and sequence accounting lives in :mod:`.protocol`, and what a publisher or subscriber
does apart from the socket calls in :mod:`.base`; the classes here add the blocking socket calls, their
asyncio twins in :mod:`.aio` the awaitable ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import zmq
from cachetools import LRUCache

from zmqkit.errors import ConfigurationError
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, attach, make_socket, resolve_options

from .._background import Background, ProxyCounters
from .base import Endpoints, PublisherBase, SubscriberBase
from .protocol import HELLO_PREFIX, MAX_TOPICS, Message

if TYPE_CHECKING:  # presence imports this package
    from ..presence.fabric import FabricLike

__all__ = ["Publisher", "Subscriber", "Forwarder", "Message"]

log = logging.getLogger(__name__)


class Publisher(PublisherBase):
    """Broadcasts ``[topic, body]`` with a sequence number per topic; sees who subscribed.

    >>> with Publisher("tcp://127.0.0.1:0") as pub:
    ...     pub.wait_for_subscribers(1, timeout=5)   # no lost first message
    ...     pub.publish("orders.7.paid", {"total": 12})
    """

    def publish(self, topic: str | bytes, body: Any) -> None:
        """Send ``body`` on ``topic``; never blocks (a subscriber at its high-water mark misses it)."""
        topic_frame, data = self._encode(topic, body)
        try:
            self._sock.send(topic_frame, zmq.SNDMORE)
            self._sock.send(data)
        except zmq.ZMQError as exc:
            raise self._failed(exc) from None

    def wait_for_subscribers(self, n: int = 1, timeout: float | None = 10.0) -> int:
        """Block until ``n`` zmqkit subscribers have subscribed (their topics are then in effect).

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once).
        """
        for wait_ms in self._waiting(n, timeout):
            self._sock.poll(wait_ms)
        return self._counter.count

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber(SubscriberBase):
    """Receives from one or more publishers (or a forwarder), by iteration, ``recv()`` or a callback.

    Topics are prefixes, or NATS-style subjects with ``*`` (one token) and ``>`` (the rest). With ``callback``,
    a background thread calls it for each message and ``recv()``/iteration are not available.

    >>> with Subscriber("tcp://127.0.0.1:5556", topics=["orders.*.paid", "logs.>"]) as sub:
    ...     msg = sub.recv(timeout=5)          # Message(topic, body, publisher, seq)
    ...     print(msg.topic, msg.body, sub.missed)
    """

    def __init__(
        self,
        endpoints: Endpoints = None,
        topics: Iterable[str | bytes] | str = ("",),
        *,
        bind: Endpoints = None,
        callback: Callable[[Message], object] | None = None,
        allow_pickle: bool = False,
        max_topics: int = MAX_TOPICS,
        service: str | None = None,
        fabric: FabricLike = None,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        if callback is not None and not callable(callback):
            raise ConfigurationError(f"bad callback {callback!r}: expected a callable")
        super().__init__(
            endpoints,
            topics,
            bind=bind,
            allow_pickle=allow_pickle,
            max_topics=max_topics,
            service=service,
            fabric=fabric,
            options=options,
            curve=curve,
        )
        self._background: Background | None = None
        if callback is not None:

            def handle(frames: list[bytes]) -> None:
                msg = self._feed(frames)
                if msg is not None:
                    callback(msg)

            # From here on the socket belongs to the background thread (which also follows the service).
            tick = self._tick if self._following is not None else None
            self._background = Background("subscriber", {self._sock: handle}, tick=tick)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; RequestTimeout when none comes within ``timeout`` seconds (None: no limit)."""
        self._no_callback()
        read, poll, waits, following = self._read, self._sock.poll, self._polls(timeout), self._following
        try:
            while True:
                if following is not None and following.members.version != following.version:
                    self._follow()
                try:
                    msg = read(zmq.NOBLOCK)
                except zmq.Again:
                    poll(next(waits))
                    continue
                if msg is not None:
                    return msg
        except zmq.ZMQError as exc:
            raise self._failed(exc) from None

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, forever (Closed once the subscriber is closed)."""
        self._no_callback()
        if self._closed:
            raise self._closed_error()
        if self._following is not None:  # recv() looks at membership between messages; a blocking read would not
            while True:
                yield self.recv()
        read = self._read
        try:
            while True:
                msg = read(0)
                if msg is not None:
                    yield msg
        except zmq.ZMQError as exc:
            raise self._failed(exc) from None

    def _read(self, flags: int) -> Message | None:
        return self._feed(self._sock.recv_multipart(flags))

    def _no_callback(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._background is not None:
            raise ConfigurationError("this Subscriber delivers to its callback; recv() and iteration are not available")

    def close(self) -> None:
        """Stop the callback thread, if any, and close the socket at once; idempotent."""
        if self._background is not None:
            self._background.stop()
        super().close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        self._refusals = Refusals()
        self._xsub = make_socket("xsub", opts)
        self._refusals.watch(self._xsub)
        self.xsub_endpoint = attach(self._xsub, xsub, None, "Forwarder")[0]
        self._xpub = make_socket("xpub", opts)
        try:
            self._refusals.watch(self._xpub)
            self.xpub_endpoint = attach(self._xpub, xpub, None, "Forwarder")[0]
        except BaseException:
            self._xsub.close(linger=0)
            raise
        self._cache: LRUCache[bytes, list[bytes]] | None = None
        self._proxy = ProxyCounters()
        # Last-value-cache mode counts in its Python loop (written only by that thread).
        self._frames = self._bytes = self._notices = self._notice_bytes = self._lvc_hits = 0
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
        # Counted before the send: a reader who has just received the message must find it counted.
        self._frames += len(frames)
        self._bytes += sum(map(len, frames))
        self._xpub.send_multipart(frames)

    def _from_subscribers(self, frames: list[bytes]) -> None:
        assert self._cache is not None
        notice = frames[0]
        self._notices += 1
        self._notice_bytes += len(notice)
        self._xsub.send(notice)  # subscriptions travel upstream to the publishers, as in the proxy
        if notice[:1] == b"\x01" and not notice.startswith(HELLO_PREFIX, 1):
            prefix = notice[1:]
            # The new subscription is in effect on the XPUB now, so this reaches the newcomer; others that
            # already got the same zmqkit message drop it as a duplicate by its sequence number.
            for topic, message in list(self._cache.items()):
                if topic.startswith(prefix):
                    self._xpub.send_multipart(message)
                    self._lvc_hits += 1

    @property
    def cached_topics(self) -> int:
        return 0 if self._cache is None else len(self._cache)

    def stats(self) -> dict[str, int]:
        """Counters, read from any thread: ``forwarded_frames``/``forwarded_bytes`` (publishers to subscribers;
        frames, as libzmq's proxy counts them: a zmqkit message is two), ``subscription_notices``/
        ``subscription_bytes`` (subscribes and unsubscribes sent up to the publishers), ``auth_failures``; with a
        last-value cache also ``lvc_hits`` (cached messages sent to new subscribers) and ``cached_topics``."""
        counts = {"auth_failures": self._refusals.count}
        if self._cache is None:
            front_in, front_bytes, _, _, back_in, back_bytes, _, _ = self._proxy.read(self._background)
            return {
                "forwarded_frames": front_in,
                "forwarded_bytes": front_bytes,
                "subscription_notices": back_in,
                "subscription_bytes": back_bytes,
                **counts,
            }
        return {
            "forwarded_frames": self._frames,
            "forwarded_bytes": self._bytes,
            "subscription_notices": self._notices,
            "subscription_bytes": self._notice_bytes,
            "lvc_hits": self._lvc_hits,
            "cached_topics": len(self._cache),
            **counts,
        }

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
