"""Chaos: node processes killed with -9 or paused with SIGSTOP while a client works."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqkit.cache import CacheClient
from zmqkit.testing import free_port

from .conftest import FakeClock

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(90)]

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


class NodeProcess:
    """``zmqkit cache serve`` in a subprocess, restartable on the same endpoint."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [ZMQKIT, "cache", "serve", "--bind", self.endpoint, "--memory", "16M"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith("cache node listening on")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    procs: list[NodeProcess] = []
    try:
        for _ in range(3):
            procs.append(NodeProcess())
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_until_answering(client: CacheClient, endpoint: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while endpoint not in client.ping(timeout=0.3):
        assert time.monotonic() < deadline, f"{endpoint} did not come back"


def owned_by(client: CacheClient, endpoint: str, count: int) -> list[str]:
    keys = (f"key:{i}" for i in range(100_000))
    return [k for k in keys if client.ring.get_node(k.encode()) == endpoint][:count]


def test_kill_9_then_restart_and_rejoin(nodes: list[NodeProcess], clock: FakeClock) -> None:
    endpoints = [n.endpoint for n in nodes]
    with CacheClient(endpoints, timeout=0.3, retries=1, dead_timeout=5, clock=clock) as client:
        keys = [f"key:{i}" for i in range(90)]
        client.set_many(dict.fromkeys(keys, "v1"))
        victim = nodes[1]
        victim.signal(signal.SIGKILL)
        assert victim.proc is not None and victim.proc.wait(10) == -signal.SIGKILL
        for key in keys:  # the client keeps working on the other two nodes
            client[key] = "v2"
        assert client.get_many(keys) == dict.fromkeys(keys, "v2")
        assert client.node_state()[victim.endpoint] == "dead"
        victim.start()
        wait_until_answering(client, victim.endpoint)
        assert client.node_state()[victim.endpoint] == "dead"  # still skipped until dead_timeout passes
        clock.now += 6
        for key in keys:
            client[key] = "v3"
        assert client.node_state()[victim.endpoint] == "alive"
        assert client.stats()[victim.endpoint]["items"] > 0  # it serves its share again
        assert client.get_many(keys) == dict.fromkeys(keys, "v3")


def test_paused_node_never_serves_a_stale_value(nodes: list[NodeProcess], clock: FakeClock) -> None:
    endpoints = [n.endpoint for n in nodes]
    with CacheClient(endpoints, timeout=0.3, retries=1, dead_timeout=5, clock=clock) as client:
        paused = nodes[2]
        keys = owned_by(client, paused.endpoint, 20)
        client.set_many(dict.fromkeys(keys, "v1"))
        assert [client.get(key) for key in keys] == ["v1"] * len(keys)  # the sync get now knows these keys
        paused.signal(signal.SIGSTOP)
        try:
            for key in keys:
                client[key] = "v2"  # the first times out on the paused node (and stays queued there)
            for key in keys:
                client[key] = "v3"  # skipped while it is dead: written to the next node
            assert client.node_state()[paused.endpoint] == "dead"
            assert client.get_many(keys) == dict.fromkeys(keys, "v3")
            assert client.get(keys[0]) == "v3"  # a known key's get skips the dead node too
        finally:
            paused.signal(signal.SIGCONT)
        wait_until_answering(client, paused.endpoint)  # it has now run the queued writes: it holds v1/v2
        clock.now += 6
        seen = [client.get(key) for key in keys for _ in range(2)]
        assert all(value in (None, "v3") for value in seen), seen  # never a value from before
        assert client.node_state()[paused.endpoint] == "alive"
        client.set_many(dict.fromkeys(keys, "v4"))
        assert client.get_many(keys) == dict.fromkeys(keys, "v4")
        assert client.stats()[paused.endpoint]["items"] >= len(keys)
