"""Prometheus metrics read the objects' counters at scrape time, over real HTTP and real sockets."""

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from zmqkit import ConfigurationError
from zmqkit.cache import CacheClient, CacheNode
from zmqkit.endpoints import free_port, free_tcp_endpoint
from zmqkit.metrics import serve_metrics
from zmqkit.patterns import Client, Producer, Server, Worker

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
    endpoint, port = free_tcp_endpoint(), free_port()
    proc = subprocess.Popen(
        [ZMQKIT, "cache", "serve", "--bind", endpoint, "--metrics-port", str(port), "--metrics-bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/metrics"
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
