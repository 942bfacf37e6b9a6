"""Publisher, Subscriber and Forwarder over real sockets, with plain pyzmq peers on the other end."""

import json
import re
import struct
import threading
from collections.abc import Callable

import pytest
import zmq

from zmqkit import ConfigurationError, Curve, KeyPair, RequestTimeout, SocketOptions
from zmqkit.patterns import Forwarder, Publisher, Subscriber
from zmqkit.patterns.fanout.protocol import HELLO_PREFIX
from zmqkit.patterns.fanout.sync import Message

LOCAL = "tcp://127.0.0.1:0"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("publisher_binds", [True, False])
def test_first_message_is_not_lost(publisher_binds: bool) -> None:
    for round_ in range(5):
        if publisher_binds:
            pub = Publisher(LOCAL)
            sub = Subscriber(pub.endpoint, ["t"])
        else:
            sub = Subscriber(bind=LOCAL, topics=["t"])
            pub = Publisher(connect=sub.endpoint)
        with pub, sub:
            if publisher_binds:
                assert pub.wait_for_subscribers(1, timeout=10) == 1
            else:
                # A bound SUB attaches a new peer (and sends it its subscriptions) only while it is being read,
                # as it would be in a real subscriber: wait in a thread while this one reads.
                waiter = threading.Thread(target=pub.wait_for_subscribers, args=(1, 10))
                waiter.start()
                while waiter.is_alive():
                    with pytest.raises(RequestTimeout):
                        sub.recv(timeout=0.05)
                waiter.join()
                assert pub.subscribers == 1
            pub.publish("t", round_)
            msg = sub.recv(timeout=10)
            assert (msg.body, msg.seq, sub.missed) == (round_, 1, 0)


@pytest.mark.timeout(30)
def test_prefixes_and_wildcards_over_sockets() -> None:
    with Publisher(LOCAL) as pub, Subscriber(pub.endpoint, ["orders.*.paid", "logs.>", "audit"]) as sub:
        pub.wait_for_subscribers(1, timeout=10)
        for topic in ["orders.1.paid", "orders.1.sent", "orders.1.2.paid", "logs.a.b", "logs", "auditor", "x"]:
            pub.publish(topic, topic)
        pub.publish("end", "end")  # not subscribed: never arrives
        got = [sub.recv(timeout=10).topic for _ in range(3)]
        assert got == ["orders.1.paid", "logs.a.b", "auditor"]
        with pytest.raises(RequestTimeout, match="no message"):
            sub.recv(timeout=0.2)
        assert sub.stats()["filtered"] == 2 and sub.missed == 0


@pytest.mark.timeout(30)
def test_iteration_and_callback() -> None:
    got: list[Message] = []
    done = threading.Event()

    def on_message(msg: Message) -> None:
        got.append(msg)
        if len(got) == 3:
            done.set()

    with Publisher(LOCAL) as pub, Subscriber(pub.endpoint) as it, Subscriber(pub.endpoint, callback=on_message) as cb:
        pub.wait_for_subscribers(2, timeout=10)
        for i in range(3):
            pub.publish("n", i)
        bodies = []
        for msg in it:
            bodies.append(msg.body)
            if len(bodies) == 3:
                break
        assert bodies == [0, 1, 2]
        assert done.wait(10) and [m.body for m in got] == [0, 1, 2]
        with pytest.raises(ConfigurationError, match="callback"):
            cb.recv(timeout=0)


@pytest.mark.timeout(60)
def test_one_publisher_twenty_subscribers_all_in_order() -> None:
    n = 300
    with Publisher(LOCAL) as pub:
        subs = [Subscriber(pub.endpoint, ["feed"]) for _ in range(20)]
        try:
            assert pub.wait_for_subscribers(20, timeout=20) == 20
            for i in range(n):
                pub.publish("feed", i)
            for sub in subs:
                received = [sub.recv(timeout=10) for _ in range(n)]
                assert [m.body for m in received] == list(range(n))
                assert [m.seq for m in received] == list(range(1, n + 1))
                assert sub.missed == 0
        finally:
            for sub in subs:
                sub.close()


@pytest.mark.timeout(60)
def test_gap_counter_equals_what_the_high_water_mark_dropped() -> None:
    small = SocketOptions(sndhwm=10, rcvhwm=10)
    body = b"x" * 8192
    with Publisher(LOCAL, options=small) as pub, Subscriber(pub.endpoint, ["t"], options=small) as sub:
        pub.wait_for_subscribers(1, timeout=10)
        for _ in range(5000):  # 40 MB while the subscriber reads nothing: far past HWMs and socket buffers
            pub.publish("t", body)
        received, last = 0, None
        while last is None or last.body != b"end":
            pub.publish("t", b"end")  # a marker that gets through once the queues have drained
            while True:
                try:
                    last = sub.recv(timeout=0.2)
                except RequestTimeout:
                    break
                received += 1
                if last.body == b"end":
                    break
        assert last.seq is not None
        dropped = last.seq - received  # published up to the marker, minus what arrived
        assert dropped > 0
        assert sub.gaps == dropped and sub.missed == dropped


@pytest.mark.timeout(30)
def test_late_joiner_counts_what_it_missed() -> None:
    with Publisher(LOCAL) as pub, Subscriber(pub.endpoint, ["t"]) as early:
        pub.wait_for_subscribers(1, timeout=10)
        for i in range(4):
            pub.publish("t", i)
        with Subscriber(pub.endpoint, ["t"]) as late:
            pub.wait_for_subscribers(2, timeout=10)
            pub.publish("t", 4)
            assert late.recv(timeout=10).seq == 5
            assert late.missed == 4 and late.stats()["joined_late"] == 4
        assert [early.recv(timeout=10).body for _ in range(5)] == [0, 1, 2, 3, 4]


@pytest.mark.timeout(30)
def test_raw_pyzmq_publisher_interoperates_and_malformed_is_skipped(raw_socket: Callable[..., zmq.Socket]) -> None:
    raw = raw_socket(zmq.XPUB, rcvtimeo=10_000)  # a lost hello fails in 10 s, not at pytest-timeout
    raw.bind(LOCAL)
    endpoint = raw.getsockopt_string(zmq.LAST_ENDPOINT)
    with Subscriber(endpoint, ["logs."]) as sub:
        while not raw.recv().startswith(b"\x01" + HELLO_PREFIX):  # the subscriber's hello: it is listening
            pass
        raw.send_multipart([b"logs.a", b"hello"])
        raw.send_multipart([b"logs.one-frame"])
        raw.send_multipart([b"logs.b", b"x", b"y"])
        raw.send_multipart([b"logs.c", b"ZKF\x01 too short"])
        raw.send_multipart([b"logs.d", struct.pack(">4s8sQB", b"ZKF\x01", b"p" * 8, 1, 77) + b"?"])
        raw.send_multipart([b"logs.e", b"world"])
        first, second = sub.recv(timeout=10), sub.recv(timeout=10)
        assert (first.topic, first.body, first.seq) == ("logs.a", b"hello", None)
        assert second.body == b"world"
        assert sub.malformed == 4


@pytest.mark.timeout(30)
def test_raw_pyzmq_subscriber_reads_zmqkit_frames(raw_socket: Callable[..., zmq.Socket]) -> None:
    raw = raw_socket(zmq.SUB, rcvtimeo=10_000)
    raw.subscribe(b"orders")
    raw.subscribe(HELLO_PREFIX + b"rawpeer1")  # as docs/wire.md says: lets the publisher count it
    with Publisher(LOCAL, codec="json") as pub:
        raw.connect(pub.endpoint)
        pub.wait_for_subscribers(1, timeout=10)
        pub.publish("orders.9", {"total": 3})
        topic, data = raw.recv_multipart()
        magic, publisher, seq, codec = struct.unpack(">4s8sQB", data[:21])
        assert (topic, magic, publisher, seq, codec) == (b"orders.9", b"ZKF\x01", pub.id, 1, 4)
        assert json.loads(data[21:]) == {"total": 3}


@pytest.mark.timeout(30)
def test_forwarder_joins_many_publishers_and_subscribers() -> None:
    with Forwarder() as fwd:
        pubs = [Publisher(connect=fwd.xsub_endpoint) for _ in range(2)]
        subs = [Subscriber(fwd.xpub_endpoint, ["a"]) for _ in range(2)]
        try:
            for pub in pubs:
                assert pub.wait_for_subscribers(2, timeout=10) == 2
            for i, pub in enumerate(pubs):
                pub.publish("a", i)
            for sub in subs:
                assert sorted(sub.recv(timeout=10).body for _ in range(2)) == [0, 1]
        finally:
            for pub in pubs:
                pub.close()
            for sub in subs:
                sub.close()


@pytest.mark.timeout(30)
def test_last_value_cache_gives_a_newcomer_the_latest_value_at_once(
    raw_socket: Callable[..., zmq.Socket],
) -> None:
    with Forwarder(last_value_cache=100) as fwd, Publisher(connect=fwd.xsub_endpoint) as pub:
        raw = raw_socket(zmq.PUB)
        raw.connect(fwd.xsub_endpoint)
        with Subscriber(fwd.xpub_endpoint, ["price."]) as first:
            pub.wait_for_subscribers(1, timeout=10)
            pub.publish("price.eur", 1)
            pub.publish("price.eur", 2)
            pub.publish("price.usd", 5)
            assert [first.recv(timeout=10).body for _ in range(3)] == [1, 2, 5]
            with Subscriber(fwd.xpub_endpoint, ["price.eur"]) as newcomer:
                msg = newcomer.recv(timeout=10)
                assert (msg.topic, msg.body, msg.seq) == ("price.eur", 2, 2)
                assert newcomer.stats()["joined_late"] == 1
                pub.publish("price.eur", 3)
                assert newcomer.recv(timeout=10).body == 3
                assert first.recv(timeout=10).body == 3  # the replay of 2 was dropped as a duplicate
                assert first.stats()["duplicates"] == 1
        assert fwd.cached_topics == 2


@pytest.mark.timeout(30)
def test_curve_encrypts_pub_sub() -> None:
    server, client = KeyPair.generate(), KeyPair.generate()
    with (
        Publisher(LOCAL, curve=Curve.server(server, allow=[client.public])) as pub,
        Subscriber(pub.endpoint, curve=Curve.client(server.public, client)) as sub,
    ):
        pub.wait_for_subscribers(1, timeout=10)
        pub.publish("s", "secret")
        assert sub.recv(timeout=10).body == "secret"


@pytest.mark.timeout(10)
def test_bad_arguments_raise_at_once() -> None:
    with pytest.raises(ConfigurationError, match="needs at least one endpoint"):
        Publisher()
    with pytest.raises(ConfigurationError, match="'nowhere'"):
        Subscriber("nowhere")
    with pytest.raises(ConfigurationError, match=re.escape("'a.>.b'")):
        Subscriber("tcp://127.0.0.1:5", ["a.>.b"])
    with pytest.raises(ConfigurationError, match="-1"):
        Forwarder(last_value_cache=-1)
    with Publisher(LOCAL) as pub:
        with pytest.raises(ConfigurationError, match="'soon'"):
            pub.wait_for_subscribers(1, timeout="soon")  # type: ignore[arg-type,unused-ignore]
        with pytest.raises(RequestTimeout, match="only 0 of 1 subscribers"):
            pub.wait_for_subscribers(1, timeout=0.1)


@pytest.mark.fuzz
@pytest.mark.timeout(60)
def test_fuzzed_raw_publisher_never_breaks_a_subscriber(raw_socket: Callable[..., zmq.Socket]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    raw = raw_socket(zmq.XPUB, rcvtimeo=10_000)  # a lost hello fails in 10 s, not at pytest-timeout
    raw.bind(LOCAL)
    with Subscriber(raw.getsockopt_string(zmq.LAST_ENDPOINT)) as sub:
        while not raw.recv().startswith(b"\x01" + HELLO_PREFIX):
            pass

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
        def check(frames: list[bytes]) -> None:
            before = sub.stats()
            raw.send_multipart(frames)
            raw.send_multipart([b"probe", b"ok"])  # a good message after the fuzzed one still arrives
            while True:
                msg = sub.recv(timeout=10)
                if msg.topic == "probe":
                    break
            after = sub.stats()
            handled = sum(after[k] - before[k] for k in ("received", "malformed", "duplicates"))
            assert handled == 2

        check()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("verbose", "seen"), [(None, 2), (False, 1)])
def test_xpub_verbose_option_passes_repeated_subscriptions(
    verbose: bool | None, seen: int, raw_socket: Callable[..., zmq.Socket]
) -> None:
    from zmqkit.sockets import bind, make_socket

    xpub = make_socket("xpub", SocketOptions(xpub_verbose=verbose))
    try:
        endpoint = bind(xpub, LOCAL)
        xpub.rcvtimeo = 10_000  # a missing notice fails in 10 s, not at pytest-timeout
        notices: list[bytes] = []
        for i in range(2):
            sub = raw_socket(zmq.SUB)
            sub.subscribe(b"same")
            sub.subscribe(b"zz-marker-%d" % i)  # always passed up; sent after "same" (byte order)
            sub.connect(endpoint)
            while notices.count(b"\x01zz-marker-%d" % i) == 0:
                notices.append(xpub.recv())
        assert notices.count(b"\x01same") == seen
    finally:
        xpub.close(linger=0)
    with pytest.raises(ConfigurationError, match="xpub_verbose='yes'"):
        SocketOptions(xpub_verbose="yes")  # type: ignore[arg-type]
