"""Fanout protocol (sans-I/O): ZKF frames, topic filters with subject wildcards, sequence numbers and gaps.

A message is two frames, ``[topic, data]``, because libzmq filters subscriptions on the first frame. A zmqkit
publisher's ``data`` starts with a 21-byte header (``ZKF``, version, publisher id, sequence number, codec id);
anything else is a raw ``[topic, body]`` message from a plain PUB peer and is delivered as-is.
Sequence numbers count per publisher *and topic*: a subscriber either gets every message of a topic or none
(prefix filters look at the whole topic), so a hole in one topic's numbers is a message it really missed.
Both sides remember at most ``max_topics`` topics (two generations of a dict: what was not used while the newer
one filled is forgotten); a forgotten topic's numbers start again at 1, which the subscriber takes as a new run.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from zmqkit.codecs import Codec, get_codec, unpack
from zmqkit.errors import ConfigurationError, ProtocolError
from zmqkit.wire import ProtocolId

__all__ = [
    "FANOUT",
    "HELLO_PREFIX",
    "Message",
    "TopicFilter",
    "PublisherState",
    "SubscriberState",
    "SubscriberCounter",
    "new_id",
]

log = logging.getLogger(__name__)

FANOUT = ProtocolId(b"ZKF", 1)
# A zmqkit Subscriber also subscribes to HELLO_PREFIX + its 8-byte id: publishers count these to know who is
# listening. 0xFF never occurs in UTF-8, so no real topic matches it, and libzmq resends subscriptions to a new
# peer in byte order, so the hello arrives after the subscriber's real topics (they are in effect once it is seen).
HELLO_PREFIX = b"\xff" + FANOUT.header
_HEADER = struct.Struct(">4s8sQB")  # ZKF + version, publisher id, sequence number, codec id
HEADER_SIZE = _HEADER.size
_MAGIC = FANOUT.header
_unpack_fields = struct.Struct(">8sQB").unpack_from  # what follows the magic
_new_message = tuple.__new__
MAX_TOPICS = 10_000  # default bound on the topics a publisher (or publisher-topic pairs a subscriber) remembers


def _check_max_topics(max_topics: object) -> int:
    if not isinstance(max_topics, int) or isinstance(max_topics, bool) or max_topics < 2:
        raise ConfigurationError(f"bad max_topics {max_topics!r}: expected an integer >= 2")
    return max_topics


def new_id() -> bytes:
    """A random 8-byte id for a publisher or subscriber."""
    return os.urandom(8)


class Message(NamedTuple):
    """One received message; ``publisher`` and ``seq`` are None for raw ``[topic, body]`` messages."""

    topic: str
    body: Any
    publisher: bytes | None = None
    seq: int | None = None


def _topic_bytes(topic: str | bytes) -> bytes:
    if isinstance(topic, str):
        return topic.encode()
    if isinstance(topic, bytes):
        return topic
    raise ConfigurationError(f"bad topic {topic!r}: expected str or bytes")


def _pattern(topic: str) -> tuple[bytes, re.Pattern[bytes] | None]:
    """The widest prefix to subscribe to for ``topic``, and a regex when it holds wildcard tokens."""
    tokens = topic.split(".")
    if "*" not in tokens and ">" not in tokens:
        return topic.encode(), None
    if ">" in tokens[:-1]:
        raise ConfigurationError(f"bad topic {topic!r}: '>' may only be the last token")
    literal: list[str] = []
    for token in tokens:
        if token in ("*", ">"):
            break
        literal.append(token)
    prefix = ".".join(literal) + "." if literal else ""
    parts = [b"[^.]+" if t == "*" else b".+" if t == ">" else re.escape(t.encode()) for t in tokens]
    return prefix.encode(), re.compile(rb"\.".join(parts))


class TopicFilter:
    """Topics as libzmq prefixes plus subject wildcards (``*`` one token, ``>`` the rest), matched locally.

    >>> f = TopicFilter(["orders.*.paid", "logs"])
    >>> sorted(f.prefixes), f.match(b"orders.7.paid"), f.match(b"orders.7.sent")
    ([b'logs', b'orders.'], True, False)
    """

    def __init__(self, topics: Iterable[str | bytes]) -> None:
        if isinstance(topics, (str, bytes)):
            topics = [topics]
        self.prefixes: set[bytes] = set()
        plain: list[bytes] = []
        patterns: list[bytes] = []
        for topic in topics:
            if isinstance(topic, bytes):
                prefix, regex = topic, None
            elif isinstance(topic, str):
                prefix, regex = _pattern(topic)
            else:
                raise ConfigurationError(f"bad topic {topic!r}: expected str or bytes")
            self.prefixes.add(prefix)
            if regex is None:
                plain.append(prefix)
            else:
                patterns.append(regex.pattern)
        if not self.prefixes:
            raise ConfigurationError("no topics given: pass topics=[''] to receive everything")
        self._plain = tuple(plain)
        self._regex = re.compile(b"|".join(b"(?:%s)" % p for p in patterns)) if patterns else None
        # With no wildcard, libzmq's prefix filter has already done all the work: match nothing locally.
        self.needed = self._regex is not None

    def match(self, topic: bytes) -> bool:
        """True when ``topic`` is wanted: it starts with a plain prefix or fully matches a wildcard pattern."""
        if topic.startswith(self._plain):
            return True
        return self._regex is not None and self._regex.fullmatch(topic) is not None


def _alias(topic: str | bytes) -> str | bytes | None:
    """The same wire topic in the other type (None for bytes that are not UTF-8)."""
    if isinstance(topic, str):
        return topic.encode()
    try:
        return topic.decode()
    except UnicodeDecodeError:
        return None


class PublisherState:
    """Encodes messages: a precomputed header prefix, one sequence counter per recently used topic.

    At most ``max_topics`` topics are remembered: those not published while ``max_topics / 2`` others were are
    forgotten, and their numbers start again at 1 (subscribers take that as a new run, not a gap).
    """

    def __init__(
        self, codec: str | Codec = "auto", publisher_id: bytes | None = None, *, max_topics: int = MAX_TOPICS
    ) -> None:
        self.id = publisher_id or new_id()
        self.codec = get_codec(codec)
        self._pack = self.codec.pack
        self._half = _check_max_topics(max_topics) // 2
        # topic as given (str or bytes) -> [topic bytes, last sequence number]; the older generation is
        # consulted on a miss and dropped when the newer one is full.
        self._topics: dict[str | bytes, list[Any]] = {}
        self._old: dict[str | bytes, list[Any]] = {}

    def encode(self, topic: str | bytes, body: Any) -> tuple[bytes, bytes]:
        """Return the two frames ``(topic, data)`` for the next message on ``topic``."""
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._entry(topic)
        entry[1] += 1
        codec_id, data = self._pack(body)
        return entry[0], _HEADER.pack(FANOUT.header, self.id, entry[1], codec_id) + data

    def _find(self, topic: str | bytes) -> list[Any] | None:
        # "a" and b"a" are one topic on the wire: they share one counter, under whichever key was used.
        alias = _alias(topic)
        for table in (self._topics, self._old):
            entry = table.get(topic)
            if entry is None and alias is not None:
                entry = table.get(alias)
            if entry is not None:
                return entry
        return None

    def _entry(self, topic: str | bytes) -> list[Any]:
        entry = self._find(topic)
        if entry is None:
            entry = [_topic_bytes(topic), 0]
        if len(self._topics) >= self._half:
            self._old, self._topics = self._topics, {}
        self._topics[topic] = entry
        return entry

    def published(self, topic: str | bytes) -> int:
        """How many messages went out on ``topic`` since it was last forgotten (its last sequence number)."""
        _topic_bytes(topic)
        entry = self._find(topic)
        return 0 if entry is None else int(entry[1])

    @property
    def topics(self) -> int:
        """How many topic keys are remembered now (at most ``max_topics``)."""
        return len(self._topics) + len(self._old)


class SubscriberState:
    """Decodes ``[topic, data]`` messages, filters wildcards, and keeps the gap accounting.

    ``missed`` counts holes inside a publisher's topic stream (dropped at a high-water mark) plus
    ``joined_late``: messages a publisher sent on a topic before this subscriber's first one arrived.
    At most ``max_topics`` (publisher, topic) pairs are remembered (those not seen while ``max_topics / 2``
    others were are forgotten, counted in ``forgotten``); once any was forgotten, a pair seen for the first
    time might be a forgotten one, so its earlier numbers no longer count as ``joined_late``.
    """

    def __init__(self, topics: TopicFilter, *, allow_pickle: bool = False, max_topics: int = MAX_TOPICS) -> None:
        self.filter = topics
        # With no wildcard, libzmq's prefix filter has already done all the work: nothing to match here.
        self._match = topics.match if topics.needed else None
        self.allow_pickle = allow_pickle
        self.received = 0
        self.gaps = 0
        self.joined_late = 0
        self.duplicates = 0
        self.malformed = 0
        self.filtered = 0
        self.restarts = 0
        self.forgotten = 0
        self._half = _check_max_topics(max_topics) // 2
        self._last: dict[tuple[bytes, bytes], int] = {}  # (publisher, topic) -> last number; newer generation
        self._old: dict[tuple[bytes, bytes], int] = {}

    @property
    def missed(self) -> int:
        return self.gaps + self.joined_late

    def feed(self, frames: Sequence[bytes]) -> Message | None:
        """Return the message in ``frames``, or None when it is filtered, a duplicate, or malformed."""
        if len(frames) != 2:
            return self._bad(f"expected 2 frames [topic, data], got {len(frames)}")
        return self.feed_pair(frames[0], frames[1])

    def feed_pair(self, topic: bytes, data: bytes) -> Message | None:
        """:meth:`feed` for a message already known to have two frames."""
        if self._match is not None and not self._match(topic):
            self.filtered += 1
            return None
        if data[:4] != _MAGIC or len(data) < HEADER_SIZE:
            return self._other(topic, data)
        publisher, seq, codec_id = _unpack_fields(data, 4)
        key = (publisher, topic)
        last = self._last.get(key)
        if last is None:
            last = self._recall(key)
        if seq != last + 1 and not self._irregular(last, seq):
            return None
        self._last[key] = seq
        body = data[HEADER_SIZE:]
        if codec_id:
            try:
                body = unpack(codec_id, body, allow_pickle=self.allow_pickle)
            except ProtocolError as exc:
                return self._bad(str(exc))
        self.received += 1
        # tuple.__new__ skips NamedTuple's Python-level __new__: this is the hot path.
        return _new_message(Message, (topic.decode("utf-8", "surrogateescape"), body, publisher, seq))

    def _recall(self, key: tuple[bytes, bytes]) -> int:
        """The last number of a pair not in the newer generation (0: unknown); makes room for it there."""
        last = self._old.pop(key, 0)
        if len(self._last) >= self._half:
            self.forgotten += len(self._old)
            self._old, self._last = self._last, {}
        return last

    @property
    def pairs(self) -> int:
        """How many (publisher, topic) pairs are remembered now (at most ``max_topics``)."""
        return len(self._last) + len(self._old)

    def _irregular(self, last: int, seq: int) -> bool:
        """Account for a number that is not the next one; False when the message is a duplicate."""
        if seq == 1:
            # The publisher forgot this topic (or restarted it): a new run, not a duplicate.
            self.restarts += 1
            return True
        if seq <= last:
            # The same message by two paths (a forwarder's last-value cache replays what we already have).
            self.duplicates += 1
            return False
        if last == 0:
            if not self.forgotten:  # else this pair may be one we forgot: its numbers say nothing
                self.joined_late += seq - 1
        else:
            self.gaps += seq - last - 1
        return True

    def _other(self, topic: bytes, data: bytes) -> Message | None:
        """A raw ``[topic, body]`` message, or a ZKF header that is short or of another version."""
        # A zmqkit header is "ZKF" and a version byte below 0x20; "ZKF" followed by text is a raw body.
        if data[:3] != b"ZKF" or len(data) < 4 or data[3] >= 0x20:
            self.received += 1
            return _new_message(Message, (topic.decode("utf-8", "surrogateescape"), data, None, None))
        if data[3] != FANOUT.version:
            return self._bad(f"unsupported ZKF version {data[3]}; this side speaks {FANOUT.version}")
        return self._bad(f"ZKF header is {len(data)} bytes, expected at least {HEADER_SIZE}")

    def _bad(self, why: str) -> Message | None:
        self.malformed += 1
        log.warning("dropped a malformed fanout message: %s", why)
        return None

    def stats(self) -> dict[str, int]:
        """The counters as a dict."""
        return {
            "received": self.received,
            "missed": self.missed,
            "gaps": self.gaps,
            "joined_late": self.joined_late,
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "filtered": self.filtered,
            "restarts": self.restarts,
            "forgotten": self.forgotten,
        }


class SubscriberCounter:
    """Counts zmqkit subscribers from XPUB subscription notices (``\\x01`` subscribe, ``\\x00`` unsubscribe)."""

    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.topics: dict[bytes, int] = {}  # other subscriptions (raw peers included), by prefix

    def feed(self, notice: bytes) -> bool:
        """Apply one notice (anything else is ignored); True when it announced a new zmqkit subscriber."""
        if not notice or notice[0] > 1:
            return False
        subscribe, topic = notice[0] == 1, notice[1:]
        if topic.startswith(HELLO_PREFIX):
            sid = topic[len(HELLO_PREFIX) :]
            if subscribe:
                new = sid not in self.ids
                self.ids.add(sid)
                return new
            self.ids.discard(sid)
            return False
        count = self.topics.get(topic, 0) + (1 if subscribe else -1)
        if count > 0:
            self.topics[topic] = count
        else:
            self.topics.pop(topic, None)
        return False

    @property
    def count(self) -> int:
        return len(self.ids)
