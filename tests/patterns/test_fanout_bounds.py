"""Fanout per-topic state is bounded: 100,000 distinct topics, and gap checks still work on live ones."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc

import pytest

from zmqkit import ConfigurationError, SocketOptions
from zmqkit.patterns import Publisher, Subscriber
from zmqkit.patterns.fanout.protocol import PublisherState, SubscriberState, TopicFilter

UNLIMITED = SocketOptions(sndhwm=0, rcvhwm=0)  # nothing dropped: every message reaches the subscriber


def test_a_forgotten_topic_restarts_at_one_and_is_a_new_run_not_a_gap() -> None:
    pub, sub = PublisherState(max_topics=4), SubscriberState(TopicFilter([""]), max_topics=100)
    assert [sub.feed(list(pub.encode("a", i))).seq for i in range(3)] == [1, 2, 3]  # type: ignore[union-attr]
    for t in ["b", "c", "d", "e"]:  # "a" not used while the newer generation filled twice
        sub.feed(list(pub.encode(t, 0)))
    assert pub.published("a") == 0 and pub.topics <= 4
    msg = sub.feed(list(pub.encode("a", 9)))
    assert msg is not None and msg.seq == 1 and msg.body == 9
    assert (sub.restarts, sub.gaps, sub.duplicates, sub.missed) == (1, 0, 0, 0)


def test_one_key_per_topic_whichever_type_it_is_given_in() -> None:
    pub = PublisherState()
    for i in range(100):
        pub.encode(f"orders.{i}.paid", b"x")
    assert pub.topics == 100
    pub.encode(b"orders.1.paid", b"x")  # the same topic as bytes: same counter
    assert pub.published("orders.1.paid") == pub.published(b"orders.1.paid") == 2
    with pytest.raises(ConfigurationError, match="max_topics"):
        PublisherState(max_topics=1)
    with pytest.raises(ConfigurationError, match="max_topics"):
        SubscriberState(TopicFilter([""]), max_topics="many")  # type: ignore[arg-type]


def test_gap_on_a_live_topic_is_still_seen_among_100k_passing_topics() -> None:
    pub, sub = PublisherState(max_topics=1000), SubscriberState(TopicFilter([""]), max_topics=1000)
    for i in range(100_000):
        frames = list(pub.encode(f"orders.{i}.paid", i))
        sub.feed(frames)
        if i % 100 == 0:
            live = list(pub.encode("live", i))
            if i != 50_000:  # this one is lost on the way
                sub.feed(live)
    assert pub.topics <= 1000 and sub.pairs <= 1000
    assert (sub.gaps, sub.restarts, sub.duplicates) == (1, 0, 0)


@pytest.mark.timeout(120)
def test_100k_distinct_topics_over_real_sockets_keep_both_sides_bounded() -> None:
    n, warm = 100_000, 20_000
    with (
        Publisher("tcp://127.0.0.1:0", options=UNLIMITED) as pub,
        Subscriber(pub.endpoint, topics=[""], options=UNLIMITED) as sub,
    ):
        pub.wait_for_subscribers(1, timeout=10)
        got = 0
        lives: list[int] = []

        def drain(until: int) -> None:
            nonlocal got
            deadline = time.monotonic() + 60
            while got < until:
                assert time.monotonic() < deadline, f"only {got} of {until} messages arrived"
                msg = sub.recv(timeout=10)
                got += 1
                if msg.topic == "live":
                    lives.append(msg.seq or 0)

        def publish(start: int, stop: int) -> int:
            sent = 0
            for i in range(start, stop):
                pub.publish(f"orders.{i}.paid", i)
                sent += 1
                if i % 1000 == 0:
                    pub.publish("live", i)
                    sent += 1
            return sent

        drain(publish(0, warm))  # the tables fill up to their bound
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            total = got
            receiver = threading.Thread(target=drain, args=(total + publish(warm, warm + n),))
            receiver.start()
            receiver.join(90)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert not receiver.is_alive() and got == total + n + n // 1000
        assert pub._state.topics <= 10_000 and sub._state.pairs <= 10_000
        assert after - before < 10_000_000, f"{after - before} bytes more after {n} new topics"
        assert lives == list(range(1, len(lives) + 1)) and sub.missed == 0  # the live topic: no false gap
