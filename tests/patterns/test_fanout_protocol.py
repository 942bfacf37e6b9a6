"""The fanout protocol without sockets: topic filters, frames, sequence numbers, gaps and malformed input."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqkit import ConfigurationError
from zmqkit.patterns.fanout.protocol import (
    HELLO_PREFIX,
    PublisherState,
    SubscriberCounter,
    SubscriberState,
    TopicFilter,
)


def test_wildcards_subscribe_to_their_widest_prefix() -> None:
    f = TopicFilter(["orders.*.paid", "logs.>", "metrics"])
    assert f.prefixes == {b"orders.", b"logs.", b"metrics"}
    assert f.match(b"orders.7.paid")
    assert not f.match(b"orders.7.sent")
    assert not f.match(b"orders.7.8.paid")  # * is exactly one token
    assert f.match(b"logs.a") and f.match(b"logs.a.b.c")
    assert not f.match(b"logs.")  # > needs at least one token
    assert f.match(b"metricsX")  # plain topics stay libzmq prefixes


def test_leading_wildcard_subscribes_to_everything() -> None:
    f = TopicFilter(["*.paid"])
    assert f.prefixes == {b""}
    assert f.match(b"x.paid") and not f.match(b"x.y.paid")


def test_plain_topics_need_no_local_matching() -> None:
    assert not TopicFilter(["a", "b"]).needed
    assert TopicFilter(["a.*"]).needed


def test_no_topics_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="topics=\\[''\\]"):
        TopicFilter([])


@pytest.mark.parametrize("bad", ["a.>.b", 5])
def test_bad_topic_names_it(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=repr(bad).replace(".", r"\.")):
        TopicFilter([bad])  # type: ignore[list-item]


def _sub(*topics: str) -> SubscriberState:
    return SubscriberState(TopicFilter(topics or [""]))


def test_round_trip_with_codecs() -> None:
    pub, sub = PublisherState("auto"), _sub()
    for body in [b"raw", "text", 7, 1.5, {"a": [1]}]:
        msg = sub.feed(list(pub.encode("t", body)))
        assert msg is not None and msg.body == body and msg.topic == "t" and msg.publisher == pub.id
    assert sub.stats()["received"] == 5 and sub.missed == 0


def test_sequence_numbers_are_per_topic() -> None:
    pub, sub = PublisherState(), _sub("a")
    frames = [pub.encode(t, b"x") for t in ["a", "b", "a", "b", "a"]]
    got = [sub.feed(list(f)) for f in frames if f[0].startswith(b"a")]  # libzmq would drop "b"
    assert [m.seq for m in got if m] == [1, 2, 3]
    assert sub.missed == 0
    assert pub.published("a") == 3 and pub.published("b") == 2


def test_str_and_bytes_topics_share_one_counter() -> None:
    pub, sub = PublisherState(), _sub()
    seqs = [sub.feed(list(pub.encode(t, b"x"))) for t in ["a", b"a", "a"]]
    assert [m.seq for m in seqs if m] == [1, 2, 3]
    assert pub.published("a") == pub.published(b"a") == 3


def test_gaps_and_late_join_and_duplicates() -> None:
    pub, sub = PublisherState(), _sub()
    frames = [list(pub.encode("t", i)) for i in range(10)]
    sub.feed(frames[2])  # joined late: 2 before it
    sub.feed(frames[3])
    sub.feed(frames[7])  # 3 dropped
    assert sub.feed(frames[7]) is None  # duplicate
    assert (sub.joined_late, sub.gaps, sub.missed, sub.duplicates) == (2, 3, 5, 1)


def test_raw_messages_pass_through_unchanged() -> None:
    sub = _sub()
    msg = sub.feed([b"topic", b"ZKFoo is plain text"])
    assert msg is not None and msg.body == b"ZKFoo is plain text" and msg.publisher is None and msg.seq is None


@pytest.mark.parametrize(
    "frames",
    [
        [b"only-topic"],
        [b"t", b"x", b"y"],
        [b"t", b"ZKF\x01short"],
        [b"t", b"ZKF\x02" + bytes(17)],  # unknown version
        [b"t", struct.pack(">4s8sQB", b"ZKF\x01", bytes(8), 1, 99)],  # unknown codec
        [b"t", struct.pack(">4s8sQB", b"ZKF\x01", bytes(8), 1, 6) + b"\x80"],  # pickle, not allowed
        [b"t", struct.pack(">4s8sQB", b"ZKF\x01", bytes(8), 1, 4) + b"{nope"],  # bad json
    ],
)
def test_malformed_messages_are_counted_and_skipped(frames: list[bytes]) -> None:
    sub = _sub()
    assert sub.feed(frames) is None
    assert sub.malformed == 1 and sub.received == 0


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=4))
def test_fuzzed_frames_never_raise(frames: list[bytes]) -> None:
    sub = SubscriberState(TopicFilter(["", "a.*"]))
    sub.feed(frames)
    assert sub.received + sub.malformed + sub.filtered + sub.duplicates == 1


def test_counter_tracks_hellos_and_raw_subscriptions() -> None:
    c = SubscriberCounter()
    for notice in [b"\x01" + HELLO_PREFIX + b"A" * 8, b"\x01" + HELLO_PREFIX + b"B" * 8, b"\x01logs", b"junk", b""]:
        c.feed(notice)
    assert c.count == 2 and c.topics == {b"logs": 1}
    c.feed(b"\x00" + HELLO_PREFIX + b"A" * 8)
    c.feed(b"\x00logs")
    assert c.count == 1 and c.topics == {}
