"""Pipeline and fanout discovery across hosts (Linux network namespaces): a worker host cut mid-run loses no
message, and comes back when healed (issue 14). Every peer runs inside a host; skips where hosts can't be made."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from zmqkit.testing import HostProcess, Hosts, wait_until

PEERS = str(Path(__file__).with_name("flow_peers.py"))
FABRIC_PORT, PRODUCER_PORT = 5557, 5555


def _got(process: HostProcess) -> list[str]:
    return [line[4:] for line in list(process.lines) if line.startswith("GOT ")]


def _send(producer: HostProcess, count: int, tag: str) -> dict[str, int]:
    assert producer.stdin is not None
    producer.stdin.write(f"{count} {tag}\n")
    producer.stdin.flush()
    done = producer.wait_line("DONE", timeout=60)
    return {key: int(value) for key, value in (part.split("=") for part in done.split())}


@pytest.mark.timeout(120)
def test_pipeline_worker_host_cut_mid_run_loses_nothing(hosts: Hosts, tmp_path: Path) -> None:
    """Producer on A, workers on B and C found by name; C is cut mid-run: every message is still processed
    (at least once), none is lost or dead; healed, C takes work again."""
    a, b = hosts
    c = hosts.add()
    fabric = a.endpoint(FABRIC_PORT)
    a.python([PEERS, "fabric", f"tcp://*:{FABRIC_PORT}"], cwd=tmp_path).wait_line("READY", timeout=20)
    producer = a.python([PEERS, "producer", fabric, f"tcp://*:{PRODUCER_PORT}"], cwd=tmp_path, stdin=subprocess.PIPE)
    producer.wait_line("READY", timeout=20)
    workers = {host.name: host.python([PEERS, "worker", fabric], cwd=tmp_path) for host in (b, c)}
    for process in workers.values():
        process.wait_line("READY", timeout=20)
    producer.wait_line("WORKERS 2", timeout=10)  # both found the producer by name (announced on A's address)

    total = 600
    assert producer.stdin is not None
    producer.stdin.write(f"{total} first\n")
    producer.stdin.flush()
    wait_until(lambda: len(_got(workers[c.name])) >= 30, 30, "the worker on C to be mid-run")
    c.cut()
    done = producer.wait_line("DONE", timeout=60)
    stats = {key: int(value) for key, value in (part.split("=") for part in done.split())}
    assert stats["acked"] == total and stats["dead"] == 0, done
    processed = set(_got(workers[b.name])) | set(_got(workers[c.name]))
    assert processed >= {f"first-{i}" for i in range(total)}, "a message was lost"
    assert stats["redelivered"] > 0, "C was cut holding nothing: the test did not cut mid-run"

    c.heal()
    producer.wait_line("WORKERS 2", timeout=30)  # C's worker found the producer again
    before = len(_got(workers[c.name]))
    stats = _send(producer, 200, "second")
    assert stats["acked"] == total + 200 and stats["dead"] == 0
    assert any(v.startswith("second-") for v in _got(workers[c.name])[before:]), "healed C took no work"


@pytest.mark.timeout(60)
def test_fanout_subscriber_finds_publishers_on_other_hosts(hosts: Hosts, tmp_path: Path) -> None:
    """A subscriber on A finds the publisher of "news" on B by name, and one started later on C within two
    heartbeat intervals (plus the TCP connect), with no restart."""
    a, b = hosts
    c = hosts.add()
    fabric = a.endpoint(FABRIC_PORT)
    a.python([PEERS, "fabric", f"tcp://*:{FABRIC_PORT}"], cwd=tmp_path).wait_line("READY", timeout=20)
    sub = a.python([PEERS, "subscriber", fabric], cwd=tmp_path)
    sub.wait_line("READY", timeout=20)
    b.python([PEERS, "publisher", fabric, "tcp://*:5556", "from-b"], cwd=tmp_path).wait_line("READY", timeout=20)
    sub.wait_line("GOT from-b", timeout=10)
    c.python([PEERS, "publisher", fabric, "tcp://*:5556", "from-c"], cwd=tmp_path).wait_line("READY", timeout=20)
    sub.wait_line("GOT from-c", timeout=2 * 0.3 + 5)
