"""Pipeline discovery on loopback: producers announce a service, workers find every producer of it as they come
and go (issue 14), sync and asyncio."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqkit import ConfigurationError, Unavailable
from zmqkit import asyncio as zasyncio
from zmqkit.patterns import Producer, Worker
from zmqkit.patterns.presence.fabric import Fabric, FabricServer, Members
from zmqkit.testing import wait_until

INTERVAL = 0.2


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with FabricServer("tcp://127.0.0.1:0") as server, Fabric([server.endpoint], interval=INTERVAL) as member:
        yield member


class Seen:
    """A handler that records what it ran (from any thread)."""

    def __init__(self) -> None:
        self.values: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, value: object) -> None:
        with self.lock:
            self.values.append(value)


@pytest.mark.timeout(60)
def test_acceptance_two_workers_and_a_second_producer_found_later(fabric: Fabric) -> None:
    """The issue's acceptance: 500 messages acknowledged through two workers that found the producer by name;
    a second producer announced later has its 100 messages done by the same workers."""
    seen = [Seen(), Seen()]
    first = Producer(bind="tcp://127.0.0.1:0", announce="emails", fabric=fabric)
    workers = [Worker(s, service="emails", fabric=fabric).start() for s in seen]
    second = None
    try:
        wait_until(lambda: first.stats()["workers"] == 2, 2 * INTERVAL + 5, "both workers to find the producer")
        for i in range(500):
            first.send(f"first {i}")
        first.join(timeout=20)
        assert first.stats()["acked"] == 500
        wait_until(lambda: all(s.values for s in seen), 10, "both workers to have taken work from the first producer")

        second = Producer(bind="tcp://127.0.0.1:0", announce="emails", fabric=fabric)
        # Within two heartbeat intervals the running workers connect to it, with no restart.
        wait_until(
            lambda: second is not None and second.stats()["workers"] == 2,
            2 * INTERVAL + 1,
            "both running workers to connect to the producer announced later",
        )
        for i in range(100):
            second.send(f"second {i}")
        second.join(timeout=20)
        assert second.stats()["acked"] == 100
        done = [v for s in seen for v in s.values]
        assert sorted(v for v in done if str(v).startswith("second")) == sorted(f"second {i}" for i in range(100))
    finally:
        for w in workers:
            w.close()
        first.close()
        if second is not None:
            second.close()


@pytest.mark.timeout(60)
def test_producer_leaving_is_drained_then_let_go(fabric: Fabric) -> None:
    """leave(): the producer is in maintenance while its workers finish its queue, then down; the worker
    drops its socket once nothing from that producer is held, and keeps working for the others."""
    seen = Seen()
    watch = Members(fabric, "emails")
    staying = Producer(bind="tcp://127.0.0.1:0", announce="emails", fabric=fabric)
    going = Producer(bind="tcp://127.0.0.1:0", announce="emails", fabric=fabric)
    worker = Worker(seen, service="emails", fabric=fabric).start()
    try:
        wait_until(lambda: len(watch.up()) == 2, 5, "both producers announced up")
        for i in range(50):
            going.send(i)
        assert going.leave(timeout=20) == []
        assert going.stats()["acked"] == 50
        wait_until(lambda: going.endpoint not in watch.current()[1], 5, "the leaving producer announced down")
        (lane,) = worker.lanes
        wait_until(lambda: list(lane.attached) == [staying.endpoint], 5, "the worker to let go of the gone producer")
        staying.send("after")
        staying.join(timeout=10)
        assert "after" in seen.values
    finally:
        worker.close()
        staying.close()
        going.close()
        watch.close()


@pytest.mark.timeout(60)
def test_fire_and_forget_worker_follows_pushing_producers(fabric: Fabric) -> None:
    seen = Seen()
    worker = Worker(seen, service="logs", fabric=fabric, acks=False).start()
    producer = Producer(bind="tcp://127.0.0.1:0", announce="logs", fabric=fabric, acks=False)
    try:
        # PUSH holds messages until a worker connects (IMMEDIATE): all of them arrive once it is found.
        wait_until(lambda: producer.endpoint in worker.lanes[0].following.attached, 5, "the PULL to connect")  # type: ignore[union-attr]
        for i in range(20):
            producer.send(i)
        wait_until(lambda: len(seen.values) == 20, 10, "20 fire-and-forget messages through the found producer")
    finally:
        producer.close()
        worker.close()


@pytest.mark.timeout(60)
def test_asyncio_worker_finds_a_producer_started_later(fabric: Fabric) -> None:
    async def main() -> None:
        seen: list[object] = []

        async def handle(value: object) -> None:
            seen.append(value)

        async with zasyncio.Worker(handle, service="emails", fabric=fabric) as worker:
            worker.start()
            async with zasyncio.Producer(bind="tcp://127.0.0.1:0", announce="emails", fabric=fabric) as producer:
                for i in range(100):
                    await producer.send(i)
                await producer.join(timeout=2 * INTERVAL + 10)
            assert sorted(seen) == list(range(100))  # type: ignore[type-var]

    asyncio.run(main())


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="together"):
        Worker(print, connect="tcp://127.0.0.1:5555", service="emails", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs service"):
        Worker(print, connect="tcp://127.0.0.1:5555", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs bind"):
        Producer(connect="tcp://127.0.0.1:5555", announce="emails", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs announce"):
        Producer(bind="tcp://127.0.0.1:0", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="bad service name"):
        Worker(print, service="", fabric="tcp://127.0.0.1:5557")


ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


@pytest.mark.timeout(90)
def test_cli_worker_and_push_found_by_name(tmp_path: Path) -> None:
    """`zmqkit worker --service` takes work from `zmqkit push --announce`, and from a Producer announced later."""
    (tmp_path / "tasks.py").write_text("def double(n):\n    return int(n) * 2\n")
    with FabricServer("tcp://127.0.0.1:0") as server:
        proc = subprocess.Popen(
            [ZMQKIT, "worker", "tasks:double", "--service", "emails", "--fabric", server.endpoint],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            push = subprocess.run(
                [ZMQKIT, "push", "tcp://127.0.0.1:0", "-", "--announce", "emails", "--fabric", server.endpoint],
                cwd=tmp_path,
                input="1\n2\n3\n",
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert push.returncode == 0, push.stderr
            assert "announced as 'emails'" in push.stderr
            assert sorted(push.stdout.split("\n")[:3]) == ["1\t2", "2\t4", "3\t6"], push.stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "service 'emails'" in err


def test_cli_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("def double(n):\n    return n\n")
    cases = [
        ["worker", "tasks:double", "--connect", "tcp://127.0.0.1:5555", "--service", "x", "--fabric", "tcp://h:1"],
        ["worker", "tasks:double"],
        ["pull", "tcp://127.0.0.1:5555", "--service", "x", "--fabric", "tcp://h:1"],
        ["pull", "--bind", "--service", "x", "--fabric", "tcp://h:1"],
        ["push", "tcp://127.0.0.1:5555", "m", "--connect", "--announce", "x", "--fabric", "tcp://h:1"],
    ]
    for argv in cases:
        done = subprocess.run([ZMQKIT, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (argv, done.stderr)
        assert "--service" in done.stderr or "--announce" in done.stderr, (argv, done.stderr)


def test_a_worker_following_a_service_with_no_producer_says_so(fabric: Fabric) -> None:
    with Worker(lambda body: None, service="nobody-yet", fabric=fabric) as worker:
        assert worker.endpoints == []
        with pytest.raises(Unavailable, match="'nobody-yet' is attached to no producer now"):
            _ = worker.endpoint
