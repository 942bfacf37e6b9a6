"""Prometheus metrics read the objects' counters at scrape time, over real HTTP and real sockets."""

import contextlib
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmqkit import ConfigurationError, Curve, KeyPair
from zmqkit.cache import CacheClient, CacheNode
from zmqkit.endpoints import free_port, free_tcp_endpoint
from zmqkit.metrics import serve_metrics
from zmqkit.patterns import Client, Forwarder, Producer, Proxy, Publisher, Server, Subscriber, Worker
from zmqkit.testing import wait_until

pytest.importorskip("prometheus_client", reason="needs the metrics extra: pip install 'zmqkit[metrics]'")

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


def scrape(url: str) -> dict[str, float]:
    """``{series{labels}: value}`` from one GET of the metrics page."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[re.sub(r"\{.*\}", "", name)] = float(value)
    return values


def run_with_metrics(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """``zmqkit ARGS`` with its metrics on a free loopback port, once they answer; the process and their URL."""
    port = free_port()
    proc = subprocess.Popen(
        [ZMQKIT, *args, "--metrics-port", str(port), "--metrics-bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return bool(scrape(url))
        except OSError:  # not listening yet
            return proc.poll() is not None  # or never will: the asserts after say why

    wait_until(answers, 20, f"zmqkit {' '.join(args)} serves its metrics")
    return proc, url


@pytest.mark.timeout(30)
def test_a_server_counts_exactly_the_requests_it_executed() -> None:
    with (
        Server("tcp://127.0.0.1:0", lambda body: body) as server,
        Client(server.endpoints, timeout=5) as client,
        serve_metrics(server, port=0, bind="127.0.0.1", service="echo") as metrics,
    ):
        before = scrape(metrics.url)["zmqkit_reqrep_executed_total"]
        for i in range(7):
            assert client.request(b"%d" % i) == b"%d" % i
        after = scrape(metrics.url)
    assert after["zmqkit_reqrep_executed_total"] - before == 7
    assert after["zmqkit_reqrep_in_flight"] == 0


@pytest.mark.timeout(30)
def test_a_producer_counts_acknowledged_messages() -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        worker = Worker(lambda msg: msg, connect=producer.endpoint).start()
        try:
            with serve_metrics(producer, port=0, bind="127.0.0.1", service="jobs") as metrics:
                for i in range(25):
                    producer.send(i)
                producer.join(timeout=20)
                values = scrape(metrics.url)
        finally:
            worker.close()
    assert values["zmqkit_pipeline_acked_total"] == 25
    assert values["zmqkit_pipeline_dead_letters_total"] == 0
    assert values["zmqkit_pipeline_in_flight"] == 0


def test_bad_arguments_raise_at_once() -> None:
    with pytest.raises(ConfigurationError, match="70000"):
        serve_metrics(object(), port=70000)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no metrics for"):
        serve_metrics(object(), port=0)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_a_cache_node_counts_exactly_the_hits_made() -> None:
    with (
        CacheNode() as node,
        CacheClient([node.start()], timeout=5) as cache,
        serve_metrics(node, port=0, bind="127.0.0.1", service="cache") as metrics,
    ):
        cache["k"] = "v"
        before = scrape(metrics.url)
        for _ in range(9):
            assert cache["k"] == "v"
        assert cache.get("missing") is None
        after = scrape(metrics.url)
    assert after["zmqkit_cache_hits_total"] - before["zmqkit_cache_hits_total"] == 9
    assert after["zmqkit_cache_misses_total"] - before["zmqkit_cache_misses_total"] == 1
    assert after["zmqkit_cache_items"] == 1 and after["zmqkit_cache_bytes"] > 0


@pytest.mark.timeout(30)
def test_a_worker_counts_what_it_processed() -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        worker = Worker(lambda msg: msg, connect=producer.endpoint).start()
        try:
            with serve_metrics(worker, port=0, bind="127.0.0.1") as metrics:
                for i in range(12):
                    producer.send(i)
                producer.join(timeout=20)
                values = scrape(metrics.url)
        finally:
            worker.close()
    assert values["zmqkit_pipeline_processed_total"] == 12
    assert values["zmqkit_pipeline_failed_total"] == 0


@pytest.mark.timeout(60)
def test_cache_serve_metrics_port_counts_exactly_the_hits_made(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    proc, url = run_with_metrics(["cache", "serve", "--bind", endpoint], tmp_path)
    try:
        with CacheClient([endpoint], timeout=20) as cache:
            cache["k"] = "v"  # answered: the node, and so its metrics, are up
            before = scrape(url)
            for _ in range(11):
                assert cache["k"] == "v"
            after = scrape(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert after["zmqkit_cache_hits_total"] - before["zmqkit_cache_hits_total"] == 11
    assert proc.returncode == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("last_value_cache", [0, 100], ids=["proxy", "lvc"])
def test_a_forwarder_counts_frames_each_way(last_value_cache: int) -> None:
    with (
        Forwarder(last_value_cache=last_value_cache) as fwd,
        Publisher(connect=fwd.xsub_endpoint, codec="bytes") as pub,
        Subscriber(fwd.xpub_endpoint, ["t."]) as sub,
        serve_metrics(fwd, port=0, bind="127.0.0.1", service="fwd") as metrics,
    ):
        pub.wait_for_subscribers(1, timeout=10)
        pub.publish("t.warm", b"")  # the subscriber's hello is answered and through: counts settle
        assert sub.recv(timeout=10).topic == "t.warm"
        before = fwd.stats()
        assert before["subscription_notices"] >= 2  # the topic and the subscriber's hello
        for _ in range(10):
            pub.publish("t.x", b"y" * 100)
        for _ in range(10):
            assert sub.recv(timeout=10).body == b"y" * 100
        after = scrape(metrics.url)
    # libzmq counts frames: a zmqkit message is two (topic, header + body).
    assert after["zmqkit_fanout_forwarded_frames_total"] - before["forwarded_frames"] == 20
    assert after["zmqkit_fanout_forwarded_bytes_total"] - before["forwarded_bytes"] >= 10 * 100
    assert after["zmqkit_fanout_subscription_notices_total"] == before["subscription_notices"]
    assert after["zmqkit_auth_failures_total"] == 0


@pytest.mark.timeout(30)
def test_a_forwarder_counts_last_value_cache_hits() -> None:
    with Forwarder(last_value_cache=10) as fwd, Publisher(connect=fwd.xsub_endpoint) as pub:
        with Subscriber(fwd.xpub_endpoint, ["price."]) as first:
            pub.wait_for_subscribers(1, timeout=10)
            pub.publish("price.eur", 1)
            pub.publish("price.usd", 2)
            assert [first.recv(timeout=10).body for _ in range(2)] == [1, 2]
            assert fwd.stats()["lvc_hits"] == 0
            with Subscriber(fwd.xpub_endpoint, ["price.eur"]) as late:
                assert late.recv(timeout=10).body == 1  # from the cache
        stats = fwd.stats()
    assert stats["lvc_hits"] == 1 and stats["cached_topics"] == 2


@pytest.mark.timeout(30)
def test_a_proxy_counts_request_and_reply_frames() -> None:
    with (
        Proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as proxy,
        Server(None, lambda body: body, connect=proxy.backend),
        Client(proxy.frontend, timeout=10) as client,
        serve_metrics(proxy, port=0, bind="127.0.0.1", service="proxy") as metrics,
    ):
        assert client.request(b"warm") == b"warm"
        before = proxy.stats()
        for _ in range(5):
            assert client.request(b"z" * 50) == b"z" * 50
        after = scrape(metrics.url)
    assert after["zmqkit_reqrep_request_frames_total"] - before["request_frames"] >= 10  # routing id + message
    assert after["zmqkit_reqrep_request_bytes_total"] - before["request_bytes"] >= 5 * 50
    assert after["zmqkit_reqrep_reply_frames_total"] - before["reply_frames"] >= 10
    assert after["zmqkit_reqrep_reply_bytes_total"] - before["reply_bytes"] >= 5 * 50
    assert proxy.stats()["request_frames"] >= after["zmqkit_reqrep_request_frames_total"]  # kept after close


# Each CURVE server, and a plain pyzmq peer of the socket type that talks to it.
SERVERS: dict[str, tuple[Callable[[Curve], Any], int]] = {
    "cache node": (lambda curve: CacheNode(curve=curve), zmq.REQ),
    "server": (lambda curve: Server("tcp://127.0.0.1:0", lambda body: body, curve=curve), zmq.DEALER),
    "producer": (lambda curve: Producer(bind="tcp://127.0.0.1:0", curve=curve), zmq.DEALER),
    "publisher": (lambda curve: Publisher("tcp://127.0.0.1:0", curve=curve), zmq.SUB),
    "forwarder": (lambda curve: Forwarder(curve=curve), zmq.SUB),
    "proxy": (lambda curve: Proxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", curve=curve), zmq.DEALER),
}


@contextlib.contextmanager
def curve_server(kind: str, curve: Curve) -> Iterator[tuple[Any, str]]:
    """The server of ``kind`` running with ``curve``, and the endpoint its clients connect to."""
    obj = SERVERS[kind][0](curve)
    try:
        if isinstance(obj, CacheNode):
            endpoint = obj.start()
        elif isinstance(obj, (Server, Proxy)):
            obj.start()
            endpoint = obj.frontend if isinstance(obj, Proxy) else obj.endpoints[0]
        else:
            endpoint = obj.xpub_endpoint if isinstance(obj, Forwarder) else obj.endpoint
        yield obj, endpoint
    finally:
        obj.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_refused_handshake_is_counted(kind: str, raw_socket: Callable[..., zmq.Socket]) -> None:
    server_keys, friend, stranger = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    with (
        curve_server(kind, Curve.server(server_keys, allow=[friend.public])) as (obj, endpoint),
        serve_metrics(obj, port=0, bind="127.0.0.1", service=kind) as metrics,
    ):
        assert obj.stats()["auth_failures"] == 0
        # A plain pyzmq client with a key the server does not allow: ZAP refuses it.
        peer = raw_socket(SERVERS[kind][1])
        peer.curve_serverkey = server_keys.public
        peer.curve_publickey, peer.curve_secretkey = stranger.public, stranger.secret
        peer.connect(endpoint)
        wait_until(lambda: obj.stats()["auth_failures"] >= 1, 10, f"the {kind} counted the refused handshake")
        refused = scrape(metrics.url)["zmqkit_auth_failures_total"]
        assert refused >= 1
        # And a client with the wrong server key (libzmq refuses it before ZAP is asked).
        lost = raw_socket(SERVERS[kind][1])
        lost.curve_serverkey = KeyPair.generate().public
        lost.curve_publickey, lost.curve_secretkey = friend.public, friend.secret
        lost.connect(endpoint)
        wait_until(lambda: obj.stats()["auth_failures"] > refused, 10, f"the {kind} counted the wrong server key")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["proxy", "forwarder"])
def test_proxy_and_forwarder_serve_metrics(command: str, tmp_path: Path) -> None:
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    sides = ["--frontend", front, "--backend", back] if command == "proxy" else ["--xsub", back, "--xpub", front]
    proc, url = run_with_metrics([command, *sides], tmp_path)
    try:
        if command == "proxy":
            with Server(None, lambda body: body, connect=back), Client(front, timeout=20) as client:
                for _ in range(3):
                    assert client.request(b"hi") == b"hi"
                values = scrape(url)
            assert values["zmqkit_reqrep_request_frames_total"] >= 6
        else:
            with Publisher(connect=back) as pub, Subscriber(front, ["t"]) as sub:
                pub.wait_for_subscribers(1, timeout=20)
                pub.publish("t", "hi")
                assert sub.recv(timeout=10).body == "hi"
                values = scrape(url)
            assert values["zmqkit_fanout_forwarded_frames_total"] >= 2
            assert values["zmqkit_fanout_subscription_notices_total"] >= 2
        assert values["zmqkit_auth_failures_total"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
