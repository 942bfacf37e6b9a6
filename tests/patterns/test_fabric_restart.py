"""Losing or restarting the fabric is not an outage, over real sockets: a fabric server restarted on its port
while a client calls (no call fails), a new member right after a restart (the full set once synced), a fabric
server that goes silent without closing (nothing expires), and one that sends no beats (expiry as before)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import zmq

from zmqkit import ZmqkitError
from zmqkit.patterns import Client, Fabric, FabricServer, Server
from zmqkit.patterns.presence.fabric import ANNOUNCE, Members
from zmqkit.patterns.presence.hearing import BEAT_TOPIC
from zmqkit.testing import wait_until

FAST = 0.2  # heartbeat interval (seconds); an entry expires after 3 missed
WINDOW = 3 * FAST


def _caller(client: Client, failures: list[Exception]) -> Callable[[], None]:
    def call() -> None:
        try:
            assert client.request(b"x") == b"ok"
        except ZmqkitError as exc:
            failures.append(exc)

    return call


def _for(seconds: float) -> Callable[[], bool]:
    """A condition that becomes true ``seconds`` from now (for calls made while time passes)."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


@pytest.mark.timeout(60)
def test_a_fabric_server_restarted_on_its_port_while_a_client_calls_fails_no_call() -> None:
    fabric_server = FabricServer("tcp://127.0.0.1:0")
    endpoint = fabric_server.endpoint
    failures: list[Exception] = []
    try:
        with (
            Fabric([endpoint], interval=FAST) as announcing,
            Fabric([endpoint], interval=FAST) as finding,
            Server("tcp://127.0.0.1:0", lambda body: b"ok", announce="echo", fabric=announcing) as server,
            Client(service="echo", fabric=finding, timeout=5) as client,
        ):
            server.start()
            call = _caller(client, failures)
            call()
            assert failures == []
            fabric_server.close()  # the only fabric server: its members hear nobody
            gone = _for(5 * WINDOW)
            wait_until(lambda: call() or gone(), 20, "calls made for five expiry windows without a fabric")
            assert client.servers() == {server.announced[0]: "ready"}
            fabric_server = FabricServer(endpoint)  # the same port, at once
            wait_until(lambda: call() or fabric_server.lookup("echo"), 10, "the server re-announced on reconnect")
            renewed = _for(3 * WINDOW)  # past the fresh window: heartbeats, not luck, keep it listed
            wait_until(lambda: call() or renewed(), 20, "calls made for three windows after the restart")
            assert finding.lookup("echo") and failures == []
    finally:
        fabric_server.close()
    assert failures == [], failures[:3]


@pytest.mark.timeout(60)
def test_a_new_member_right_after_a_restart_sees_the_full_set_once_synced() -> None:
    fabric_server = FabricServer("tcp://127.0.0.1:0")
    endpoint = fabric_server.endpoint
    everyone = [f"tcp://10.9.4.{i}:11311" for i in (1, 2, 3)]
    try:
        # A heartbeat every 60 s: only a re-announce when the connection comes back can explain a full snapshot.
        with Fabric([endpoint], interval=60) as announcing:
            for node in everyone:
                announcing.announce("cache", node)
            wait_until(lambda: len(fabric_server.lookup("cache")) == 3, 5, "the fabric server has the three")
            fabric_server.close()
            fabric_server = FabricServer(endpoint)
            with Fabric([endpoint], interval=FAST) as late:
                members = Members(late, "cache")
                assert members.wait_synced(10)
                assert sorted(members.current()[1]) == everyone
                members.close()
    finally:
        fabric_server.close()


@pytest.fixture
def raw_fabric(zmq_ctx: zmq.Context) -> zmq.Socket:
    """A fabric server written with a plain XPUB socket: the test says what it sends, and when."""
    sock = zmq_ctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)
    sock.bind("tcp://127.0.0.1:0")
    return sock


def _relay(sock: zmq.Socket, endpoint: str, interval: float) -> None:
    body = {"service": "jobs", "endpoint": endpoint, "status": "up", "meta": {}, "interval": interval, "node": "n"}
    sock.send_multipart([b"_zk.presence.jobs", json.dumps(body).encode()])


def _subscribed(sock: zmq.Socket, topic: bytes) -> None:
    def seen() -> bool:
        while sock.poll(0):
            if sock.recv() == b"\x01" + topic:
                return True
        return False

    wait_until(seen, 5, f"the member's subscription to {topic!r}")


@pytest.mark.timeout(30)
def test_a_fabric_server_gone_silent_without_closing_expires_nothing_until_it_is_heard_again(
    raw_fabric: zmq.Socket,
) -> None:
    """A cut link: the connection stays up (no RST) but the beats stop; the member holds what it knows."""
    endpoint = raw_fabric.getsockopt(zmq.LAST_ENDPOINT).decode()
    with Fabric(endpoint, interval=FAST) as member:
        events: list[str] = []
        member.watch("jobs", lambda event, entry: events.append(event))
        _subscribed(raw_fabric, b"_zk.presence.jobs")
        raw_fabric.send_multipart([BEAT_TOPIC, b"0.1"])
        _relay(raw_fabric, "tcp://10.9.5.1:1", FAST)
        wait_until(lambda: events == ["added"], 5, "the entry seen")
        silent = _for(5 * WINDOW)
        wait_until(silent, 10, "five expiry windows of silence")
        assert events == ["added"] and member.lookup("jobs")
        # Beats again (the link healed), the announcer stays silent: it expires within a fresh window.
        healed = time.monotonic()

        def beat_and_expired() -> bool:
            raw_fabric.send_multipart([BEAT_TOPIC, b"0.1"])
            return events == ["added", "expired"]

        wait_until(beat_and_expired, 10, "the silent entry expired once the fabric was heard again")
        assert time.monotonic() - healed >= WINDOW * 0.9, "expired before its fresh window ran out"


@pytest.mark.timeout(30)
def test_with_a_fabric_server_that_sends_no_beats_an_entry_expires_as_before(raw_fabric: zmq.Socket) -> None:
    endpoint = raw_fabric.getsockopt(zmq.LAST_ENDPOINT).decode()
    with Fabric(endpoint, interval=FAST) as member:
        events: list[str] = []
        member.watch("jobs", lambda event, entry: events.append(event))
        _subscribed(raw_fabric, b"_zk.presence.jobs")
        _relay(raw_fabric, "tcp://10.9.5.2:1", FAST)
        wait_until(lambda: events == ["added", "expired"], WINDOW + 5, "expired after three missed heartbeats")


@pytest.mark.timeout(30)
def test_a_fabric_server_beats_to_whoever_subscribes_and_holds_snapshots_while_it_settles(
    zmq_ctx: zmq.Context,
) -> None:
    with FabricServer("tcp://127.0.0.1:0", beat=0.5, settle=1.0) as server:
        raw = zmq_ctx.socket(zmq.XSUB)
        raw.linger = 0
        raw.connect(server.endpoint)
        raw.send(b"\x01" + BEAT_TOPIC)
        raw.send(b"\x01_zk.presence.jobs")
        body = {"service": "jobs", "endpoint": "tcp://10.9.5.3:1", "status": "up", "interval": 60, "node": "raw"}
        raw.send(ANNOUNCE + json.dumps(body).encode())
        assert raw.poll(5000), "no beat"
        assert raw.recv_multipart() == [BEAT_TOPIC, b"0.5"]
        before_end: list[list[bytes]] = []

        def ended() -> bool:
            while raw.poll(0):
                frames = raw.recv_multipart()
                if frames == [b"_zk.presence.jobs", b""]:
                    return True
                before_end.append(frames)
            return False

        wait_until(ended, 10, "the end of the snapshot")
        # The subscription came before the announcement; held until the server settled, the snapshot has it.
        entries = [json.loads(body) for topic, body in before_end if topic == b"_zk.presence.jobs"]
        assert [e["endpoint"] for e in entries][-1:] == ["tcp://10.9.5.3:1"]
        raw.close()


@pytest.mark.timeout(30)
def test_a_closed_fabric_server_frees_its_port_at_once() -> None:
    for _ in range(20):
        first = FabricServer("tcp://127.0.0.1:0")
        endpoint = first.endpoint
        first.close()
        FabricServer(endpoint, settle=0).close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _snapshot_ended(member: zmq.Socket, endpoints: list[str]) -> Callable[[], bool]:
    """A condition: the end marker of ``member``'s snapshot has come (the endpoints before it go to ``endpoints``)."""

    def ended() -> bool:
        while member.poll(0):
            _topic, body = member.recv_multipart()
            if body == b"":
                return True
            endpoints.append(json.loads(body)["endpoint"])
        return False

    return ended


@pytest.mark.timeout(30)
def test_a_fabric_server_that_heard_nobody_for_a_whole_window_settles_again_before_answering(
    zmq_ctx: zmq.Context,
) -> None:
    """Its host cut off and healed: every entry expired unheard. The first announcement heard again starts a
    new settle, so a member subscribing right then gets every member that comes back, not only the first."""
    clock = _Clock()
    with FabricServer("tcp://127.0.0.1:0", settle=1.0, clock=clock) as server:
        announcer = zmq_ctx.socket(zmq.XSUB)
        announcer.linger = 0
        announcer.connect(server.endpoint)

        def announce(endpoint: str) -> None:
            body = {"service": "jobs", "endpoint": endpoint, "status": "up", "interval": 1, "node": "raw"}
            announcer.send(ANNOUNCE + json.dumps(body).encode())

        def listed() -> list[str]:
            return [entry.endpoint for entry in server.lookup("jobs")]

        a, b = "tcp://10.9.6.1:1", "tcp://10.9.6.2:1"
        clock.now += 2  # past the start's own settle
        announce(a)
        announce(b)
        wait_until(lambda: listed() == [a, b], 5, "both announced")
        clock.now += 10  # the cut: three missed heartbeats and more, nothing heard
        assert listed() == []
        announce(a)  # healed: A is heard first
        wait_until(lambda: listed() == [a], 5, "A heard again")
        subscriptions = server.stats()["subscriptions"]
        member = zmq_ctx.socket(zmq.XSUB)
        member.linger = 0
        member.connect(server.endpoint)
        member.send(b"\x01_zk.presence.jobs")
        wait_until(lambda: server.stats()["subscriptions"] > subscriptions, 5, "the new member's subscription")
        announce(b)
        wait_until(lambda: listed() == [a, b], 5, "B heard again")
        clock.now += 1.5  # the new settle is over
        snapshot: list[str] = []
        wait_until(_snapshot_ended(member, snapshot), 10, "the end of the snapshot")
        # Heartbeats are passed on live too (B may come twice); what matters is what came before the end marker.
        assert sorted(set(snapshot)) == [a, b], "the snapshot was sent before the lost members came back"
        member.close()
        announcer.close()


@pytest.mark.timeout(30)
def test_a_fabric_server_whose_members_all_left_saying_so_does_not_settle_again(zmq_ctx: zmq.Context) -> None:
    clock = _Clock()
    with FabricServer("tcp://127.0.0.1:0", settle=1.0, clock=clock) as server:
        announcer = zmq_ctx.socket(zmq.XSUB)
        announcer.linger = 0
        announcer.connect(server.endpoint)

        def announce(endpoint: str, status: str) -> None:
            body = {"service": "jobs", "endpoint": endpoint, "status": status, "interval": 1, "node": "raw"}
            announcer.send(ANNOUNCE + json.dumps(body).encode())

        clock.now += 2  # past the start's own settle
        announce("tcp://10.9.6.3:1", "up")
        announce("tcp://10.9.6.3:1", "down")
        wait_until(lambda: server.stats()["announcements"] == 2, 5, "both announcements taken")
        clock.now += 10
        announce("tcp://10.9.6.4:1", "up")
        wait_until(lambda: server.stats()["announcements"] == 3, 5, "the next one taken")
        member = zmq_ctx.socket(zmq.XSUB)
        member.linger = 0
        member.connect(server.endpoint)
        member.send(b"\x01_zk.presence.jobs")
        # The clock stands still: only a snapshot answered at once can end.
        wait_until(_snapshot_ended(member, []), 10, "the snapshot, answered at once")
        member.close()
        announcer.close()
