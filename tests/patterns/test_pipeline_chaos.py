"""Pipeline under crashes: workers and a spooled producer killed with -9 mid-run lose nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zmqkit.patterns import Producer, Worker

PROCS = Path(__file__).with_name("pipeline_procs.py")


def start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(PROCS), *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc


def wait_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == line


@pytest.mark.chaos
@pytest.mark.timeout(90)
def test_two_of_four_workers_killed_mid_run_nothing_lost() -> None:
    n, credit = 20_000, 50
    with Producer(bind="tcp://127.0.0.1:0", worker_timeout=1.0) as producer:
        procs = [start("worker", producer.endpoint, str(credit)) for _ in range(4)]
        try:
            for proc in procs:
                wait_line(proc, "ready")
            sender = threading.Thread(target=lambda: [producer.send(i) for i in range(n)])
            sender.start()
            deadline = time.monotonic() + 30
            while producer.stats()["acked"] < n // 4:
                assert time.monotonic() < deadline, producer.stats()
                threading.Event().wait(0.01)
            procs[0].kill()
            procs[1].kill()
            assert producer.stats()["acked"] < n  # mid-run
            sender.join(30)
            producer.join(timeout=40)
            stats = producer.stats()
            assert stats["acked"] == n and stats["dead"] == 0 and stats["in_flight"] == 0
            # Only what the two dead workers held can come twice.
            assert stats["duplicates"] <= stats["redelivered"] <= 2 * credit, stats
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_spooled_producer_killed_and_restarted_sends_what_was_not_done(tmp_path: Path, tcp_endpoint: str) -> None:
    spool = str(tmp_path / "work.db")
    proc = start("spool_producer", tcp_endpoint, spool)
    try:
        wait_line(proc, "accepted")
    finally:
        proc.kill()
        proc.wait()
    got: list[int] = []
    with Producer(bind=tcp_endpoint, spool=spool) as producer:
        assert producer.stats()["in_flight"] == 500
        with Worker(got.append, connect=producer.endpoint) as worker:
            worker.start()
            producer.join(timeout=30)
    assert sorted(got) == list(range(500))
    with Producer(bind="tcp://127.0.0.1:0", spool=spool) as producer:
        assert producer.stats()["in_flight"] == 0  # acknowledged work left the spool
