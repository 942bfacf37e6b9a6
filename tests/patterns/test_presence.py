"""Presence and Directory over real sockets: directly, and through a Forwarder."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from zmqkit import ConfigurationError, RequestTimeout
from zmqkit.patterns import Directory, Forwarder, Presence
from zmqkit.patterns.presence.protocol import Entry

LOCAL = "tcp://127.0.0.1:0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def fabric(kind: str) -> Iterator[tuple[Presence, Directory]]:
    """A Presence and a Directory joined directly or through a forwarder (with or without a value cache)."""
    if kind == "direct":
        with Directory(bind=LOCAL) as directory, Presence(directory.endpoint) as presence:
            yield presence, directory
        return
    with (
        Forwarder(last_value_cache=100 if kind == "lvc" else 0) as fwd,
        Directory(fwd.xpub_endpoint) as directory,
        Presence(fwd.xsub_endpoint) as presence,
    ):
        yield presence, directory


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["direct", "forwarder", "lvc"])
def test_announce_lookup_maintenance_and_clean_down(kind: str) -> None:
    events: list[tuple[str, str]] = []
    removed = threading.Event()

    def on_change(event: str, entry: Entry) -> None:
        events.append((event, entry.status))
        if event == "removed":
            removed.set()

    with fabric(kind) as (presence, directory):
        directory.watch(on_change)
        presence.announce("orders", "tcp://10.0.0.5:6000", meta={"kind": "queue"})
        entry = directory.wait("orders", timeout=10)
        assert (entry.endpoint, entry.meta, entry.node) == ("tcp://10.0.0.5:6000", {"kind": "queue"}, presence.node)
        presence.announce("orders", "tcp://10.0.0.5:6000", status="maintenance")
        assert directory.wait("orders", timeout=10, status="maintenance").status == "maintenance"
        assert [e.status for e in directory.lookup("orders")] == ["maintenance"]
        presence.announce("orders", "tcp://10.0.0.5:6000", status="down")
        assert removed.wait(10)
        assert directory.lookup("orders") == []
    assert events == [("added", "up"), ("changed", "maintenance"), ("removed", "down")]


@pytest.mark.timeout(30)
def test_entries_expire_after_missed_heartbeats_on_the_injected_clock() -> None:
    clock = FakeClock()
    expired = threading.Event()
    with Directory(bind=LOCAL, misses=3, clock=clock) as directory:
        directory.watch(lambda event, entry: expired.set() if event == "expired" else None)
        # A long real interval: no heartbeat comes during the test, as if the service had hung.
        with Presence(directory.endpoint, interval=60) as presence:
            # Once the directory is known, the announcement below is the only one it will get.
            assert presence.wait_for_directories(1, timeout=10) == 1
            presence.announce("search", "tcp://10.0.0.9:7000")
            assert directory.wait("search", timeout=10).expires_at == 180
            clock.now = 179.9
            assert directory.lookup("search")
            clock.now = 180.0
            assert directory.lookup("search") == []
            assert expired.wait(10)


@pytest.mark.timeout(30)
def test_closing_a_presence_removes_its_services_at_once() -> None:
    with Directory(bind=LOCAL) as directory:
        presence = Presence(directory.endpoint)
        presence.announce("a", "tcp://h:1")
        presence.announce("b", "tcp://h:2", status="maintenance")
        directory.wait("a", timeout=10)
        directory.wait("b", timeout=10, status=None)
        gone = threading.Event()
        directory.watch(lambda event, entry: gone.set() if not directory.lookup() else None)
        presence.close()
        assert gone.wait(10)


@pytest.mark.timeout(30)
def test_a_late_directory_learns_everything_at_once() -> None:
    with Presence(bind=LOCAL, interval=60) as presence:  # no heartbeat during the test: the join triggers it
        presence.announce("cache", "tcp://h:11211")
        with Directory(presence.endpoint) as directory:
            assert directory.wait("cache", timeout=10).endpoint == "tcp://h:11211"


@pytest.mark.timeout(10)
def test_presence_errors() -> None:
    with Directory(bind=LOCAL) as directory:
        with pytest.raises(RequestTimeout, match="'nothing'"):
            directory.wait("nothing", timeout=0.05)
        with pytest.raises(ConfigurationError, match="callable"):
            directory.watch("print")  # type: ignore[arg-type]
        with Presence(directory.endpoint) as presence:
            with pytest.raises(ConfigurationError, match="'dead'"):
                presence.announce("x", "tcp://h:1", status="dead")
            with pytest.raises(ConfigurationError, match="JSON"):
                presence.announce("x", "tcp://h:1", meta={"f": object()})


ANNOUNCE_FOREVER = """
import sys, threading
from zmqkit.patterns import Presence
presence = Presence(sys.argv[1], interval=0.05)
presence.announce("worker", "tcp://10.9.9.9:1")
threading.Event().wait()  # until killed
"""


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_a_killed_service_expires_after_missed_heartbeats() -> None:
    events: list[str] = []
    expired = threading.Event()

    def on_change(event: str, entry: Entry) -> None:
        events.append(event)
        if event == "expired":
            expired.set()

    with Directory(bind=LOCAL, misses=3) as directory:
        directory.watch(on_change)
        proc = subprocess.Popen([sys.executable, "-c", ANNOUNCE_FOREVER, directory.endpoint], cwd="/")
        try:
            directory.wait("worker", timeout=30)
            proc.kill()  # SIGKILL: no goodbye, the heartbeats just stop
            assert expired.wait(30)
        finally:
            proc.kill()
            proc.wait(10)
        assert directory.lookup("worker") == []
    assert events == ["added", "expired"]
