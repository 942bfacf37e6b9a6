"""The discovery fabric over real sockets: fabric servers, members that announce and follow, expiry, redundancy,
bad input, CURVE and the CLI (`zmqkit fabric`, `zmqkit services`)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from zmqkit import AuthenticationFailed, ConfigurationError, Curve, RequestTimeout
from zmqkit.cache import CacheClient
from zmqkit.cli import main
from zmqkit.endpoints import free_tcp_endpoint
from zmqkit.patterns import Client, Fabric, FabricServer, Worker
from zmqkit.patterns.presence.fabric import (
    ANNOUNCE,
    Announcer,
    Members,
    advertised,
    fabric_endpoints,
)
from zmqkit.security import generate_keys
from zmqkit.testing import wait_until

FAST = 0.2  # heartbeat interval for these tests (seconds)


@pytest.fixture
def server() -> Iterator[FabricServer]:
    with FabricServer("tcp://127.0.0.1:0") as fabric_server:
        yield fabric_server


def _member(*servers: FabricServer, **options: object) -> Fabric:
    return Fabric([s.endpoint for s in servers], interval=FAST, **options)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_an_instance_is_found_and_its_status_followed(server: FabricServer) -> None:
    with _member(server) as announcing, _member(server) as finding:
        members = Members(finding, "thumbs")
        announcer = Announcer(announcing, "thumbs", ["tcp://10.9.0.1:6000"], meta={"kind": "reqrep"})
        wait_until(lambda: members.up() == ["tcp://10.9.0.1:6000"], 5, "the new instance listed as up")
        assert finding.lookup("thumbs")[0].meta == {"kind": "reqrep"}
        announcer.maintenance()
        wait_until(lambda: members.current()[1] == {"tcp://10.9.0.1:6000": "maintenance"}, 5, "maintenance seen")
        assert members.up() == []
        announcer.close()
        wait_until(lambda: members.current()[1] == {}, 5, "the instance gone once it announced down")
        members.close()


@pytest.mark.timeout(30)
def test_a_late_member_gets_a_snapshot_without_waiting_for_a_heartbeat(server: FabricServer) -> None:
    # A heartbeat every 60 s: only the fabric server's snapshot can explain the late member knowing the service.
    with Fabric(server.endpoint, interval=60) as announcing, _member(server) as late:
        announcing.announce("search", "tcp://10.9.0.2:7000")
        wait_until(lambda: server.lookup("search"), 5, "the fabric server took the announcement")
        late.watch("search", lambda event, entry: None)
        assert late.wait_synced(5)
        assert [e.endpoint for e in late.lookup("search")] == ["tcp://10.9.0.2:7000"]
        assert late.wait("search", timeout=0).endpoint == "tcp://10.9.0.2:7000"


@pytest.mark.timeout(30)
def test_a_killed_announcer_expires_after_its_missed_heartbeats(server: FabricServer, tmp_path: Path) -> None:
    code = (
        "import sys, threading\n"
        "from zmqkit.patterns import Fabric\n"
        f"f = Fabric({server.endpoint!r}, interval={FAST})\n"
        "f.announce('jobs', 'tcp://10.9.0.3:8000')\n"
        "print('READY', flush=True)\n"
        "threading.Event().wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        with _member(server) as finding:
            events: list[str] = []
            finding.watch("jobs", lambda event, entry: events.append(event))
            wait_until(lambda: events == ["added"], 10, "the announcer's entry seen")
            proc.kill()  # no goodbye: only the missed heartbeats can remove it
            proc.wait(10)
            wait_until(lambda: events == ["added", "expired"], 3 * FAST + 5, "the entry expired after 3 missed beats")
            wait_until(lambda: not server.lookup("jobs"), 5, "the fabric server's table expired it too")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(30)
def test_two_fabric_servers_one_lost_discovery_goes_on() -> None:
    with (
        FabricServer("tcp://127.0.0.1:0") as first,
        FabricServer("tcp://127.0.0.1:0") as second,
        _member(first, second) as announcing,
        _member(first, second) as finding,
    ):
        members = Members(finding, "mail")
        announcing.announce("mail", "tcp://10.9.0.4:9000")
        wait_until(lambda: members.up() == ["tcp://10.9.0.4:9000"], 5, "the instance seen through both servers")
        first.close()
        lost_at = finding.lookup("mail")[0].last_seen
        # Heartbeats keep arriving through the second server, past the time the entry would have expired ...
        wait_until(
            lambda: finding.lookup("mail") and finding.lookup("mail")[0].last_seen > lost_at + 4 * FAST,
            10,
            "heartbeats still arriving through the second fabric server",
        )
        # ... and a new instance announced after the loss is found.
        announcing.announce("mail", "tcp://10.9.0.5:9000")
        wait_until(lambda: len(members.up()) == 2, 5, "a new instance found with one fabric server left")
        members.close()


@pytest.mark.timeout(30)
def test_malformed_announcements_are_counted_and_ignored(server: FabricServer, zmq_ctx: zmq.Context) -> None:
    raw = zmq_ctx.socket(zmq.XSUB)
    raw.linger = 0
    raw.connect(server.endpoint)
    bad = [
        [b"hello"],
        [ANNOUNCE + b"{not json"],
        [ANNOUNCE + b"[1, 2]"],
        [ANNOUNCE + json.dumps({"service": "x", "endpoint": "tcp://h:1", "status": "sideways"}).encode()],
        [ANNOUNCE + json.dumps({"service": "x y", "endpoint": "tcp://h:1", "status": "up", "interval": 1}).encode()],
        [ANNOUNCE + json.dumps({"service": "x", "endpoint": "tcp://h:1", "status": "up", "interval": -1}).encode()],
        [b"two", b"frames"],
    ]
    good = {"service": "x", "endpoint": "tcp://h:1", "status": "up", "meta": {}, "interval": 1, "node": "raw"}
    # Forged ones that parse as JSON in Python but would break every follower, or the server, if taken:
    bad += [
        [ANNOUNCE + json.dumps({**good, "endpoint": "10.0.0.5:7000"}).encode()],  # not an endpoint to connect to
        [ANNOUNCE + json.dumps({**good, "endpoint": "tcp://*:7000"}).encode()],
        [ANNOUNCE + json.dumps({**good, "interval": math.nan}).encode()],  # never expires, never listed
        [ANNOUNCE + json.dumps({**good, "interval": math.inf}).encode()],
        [ANNOUNCE + json.dumps({**good, "interval": 10**6}).encode()],
        [ANNOUNCE + json.dumps({**good, "meta": {"load": math.nan}}).encode()],  # NaN is not JSON
        [ANNOUNCE + b'{"service": "\\ud800", "endpoint": "tcp://h:2", "status": "up", "interval": 1}'],
        [ANNOUNCE + b"[" * 100_000 + b"]" * 100_000],  # deeper than the JSON parser's stack
        [ANNOUNCE + json.dumps({**good, "meta": {"blob": "x" * 70_000}}).encode()],
        [ANNOUNCE + json.dumps({**good, "service": "s" * 256}).encode()],
    ]
    for frames in bad:
        raw.send_multipart(frames)
    wait_until(lambda: server.stats()["malformed"] == len(bad), 5, "every malformed announcement counted")
    raw.send(ANNOUNCE + json.dumps(good).encode())
    wait_until(lambda: [e.endpoint for e in server.lookup("x")] == ["tcp://h:1"], 5, "a good one still taken")
    assert server.stats()["entries"] == 1
    # And the server still answers a new member's subscription with its snapshot, the forged ones left out.
    with _member(server) as member:
        member.watch(None, lambda event, entry: None)
        assert member.wait_synced(5)
        assert [(e.service, e.endpoint) for e in member.lookup(None)] == [("x", "tcp://h:1")]
    raw.close()


def test_what_a_member_announces_is_checked_before_it_is_sent(server: FabricServer) -> None:
    with _member(server) as member:
        with pytest.raises(ConfigurationError, match=r"bad meta .*not JSON"):
            member.announce("x", "tcp://h:1", meta={"load": math.nan})
        with pytest.raises(ConfigurationError, match="at most 8192"):
            member.announce("x", "tcp://h:1", meta={"blob": "x" * 10_000})
        with pytest.raises(ConfigurationError, match="bad service name"):
            member.announce("\ud800", "tcp://h:1")
        with pytest.raises(ConfigurationError, match="longer than 255 bytes"):
            member.announce("s" * 256, "tcp://h:1")
        with pytest.raises(ConfigurationError, match=re.escape("bad endpoint '10.0.0.5:7000'")):
            member.announce("x", "10.0.0.5:7000")
    with pytest.raises(ConfigurationError, match="bad interval=nan"):
        Fabric(server.endpoint, interval=math.nan)


@pytest.mark.timeout(30)
def test_a_follower_made_again_hears_an_instance_it_was_replayed_expire(zmq_ctx: zmq.Context) -> None:
    """A client closed and made again while an instance is still in this member's table but already gone at the
    server: the new follower is replayed the instance, and must then hear it expire, not keep a ghost."""
    with (
        FabricServer("tcp://127.0.0.1:0", settle=0) as server,  # its snapshots at once: this test times expiry
        Fabric(server.endpoint, interval=FAST, misses=25) as member,  # the member keeps entries for 5 s
    ):
        first = Members(member, "cache")
        assert first.wait_synced(5)  # subscribed: the announcement below reaches it as it passes
        raw = zmq_ctx.socket(zmq.XSUB)
        raw.linger = 0
        raw.connect(server.endpoint)
        once = {"service": "cache", "endpoint": "tcp://10.9.3.1:1", "status": "up", "interval": FAST, "node": "k"}
        raw.send(ANNOUNCE + json.dumps(once).encode())  # one heartbeat, then silence: a node killed -9
        wait_until(lambda: first.up() == ["tcp://10.9.3.1:1"], 5, "the instance seen")
        wait_until(lambda: server.lookup("cache") == [], 5, "the instance expired at the server (0.6 s)")
        assert member.lookup("cache")  # still in the member's table (5 s): the window this test is about
        first.close()
        second = Members(member, "cache")  # made again at once: the replay gives it the instance
        wait_until(lambda: second.current()[1] == {}, 15, "the replayed instance expired for the new follower")
        second.close()
        raw.close()


@pytest.mark.timeout(30)
def test_the_fabric_table_is_bounded() -> None:
    with FabricServer("tcp://127.0.0.1:0", max_entries=2) as server, _member(server) as member:
        for port in (1, 2, 3):
            member.announce("flood", f"tcp://10.9.1.1:{port}")
        wait_until(lambda: server.stats()["refused"] >= 1, 5, "the third entry refused")
        assert server.stats()["entries"] == 2
        assert len(server.lookup("flood")) == 2


@pytest.mark.timeout(30)
def test_curve_lets_only_allowed_keys_announce_and_says_when_refused(tmp_path: Path) -> None:
    generate_keys("fabric", tmp_path)
    generate_keys("allowed", tmp_path)
    generate_keys("stranger", tmp_path)
    keys = {name: (tmp_path / f"{name}.key", tmp_path / f"{name}.key_secret") for name in ("fabric", "allowed")}
    security = Curve.server(keys["fabric"][1], allow=[keys["allowed"][0]])
    with FabricServer("tcp://127.0.0.1:0", curve=security) as server:
        allowed = Curve.client(keys["fabric"][0], keys["allowed"][1])
        stranger = Curve.client(keys["fabric"][0], tmp_path / "stranger.key_secret")
        with (
            Fabric(server.endpoint, interval=FAST, curve=stranger) as refused,
            Fabric(server.endpoint, interval=FAST, curve=allowed) as member,
        ):
            refused.announce("forged", "tcp://10.9.2.1:1")
            member.announce("real", "tcp://10.9.2.2:1")
            started = time.monotonic()
            with pytest.raises(AuthenticationFailed, match="not allowed"):
                refused.wait("real", timeout=20)
            assert time.monotonic() - started < 10  # said once refused, not at the wait's deadline
            assert not refused.wait_synced(timeout=20)
            assert member.wait("real", timeout=5).endpoint == "tcp://10.9.2.2:1"
            assert server.lookup("forged") == []
            assert [e.service for e in server.lookup()] == ["real"]
            wait_until(lambda: server.stats()["auth_failures"] >= 1, 5, "the refused handshake counted")


def test_the_fabric_comes_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMQKIT_FABRIC", "tcp://10.0.0.1:5557, tcp://10.0.0.2:5557")
    assert fabric_endpoints(None) == ["tcp://10.0.0.1:5557", "tcp://10.0.0.2:5557"]
    assert fabric_endpoints("tcp://10.0.0.3:5557") == ["tcp://10.0.0.3:5557"]
    monkeypatch.delenv("ZMQKIT_FABRIC")
    with pytest.raises(ConfigurationError, match="ZMQKIT_FABRIC"):
        Fabric()
    with pytest.raises(ConfigurationError, match="interval"):
        Fabric("tcp://127.0.0.1:5557", interval=0)


def test_a_bind_to_every_interface_is_advertised_at_the_route_to_the_fabric() -> None:
    assert advertised("tcp://0.0.0.0:6000", ["tcp://127.0.0.1:5557"]) == "tcp://127.0.0.1:6000"
    assert advertised("tcp://*:6000", ["tcp://127.0.0.1:5557"]) == "tcp://127.0.0.1:6000"
    assert advertised("tcp://10.1.2.3:6000", ["tcp://127.0.0.1:5557"]) == "tcp://10.1.2.3:6000"
    assert advertised("ipc:///tmp/x", ["tcp://127.0.0.1:5557"]) == "ipc:///tmp/x"
    assert advertised("tcp://*:6000", ["tcp://127.0.0.1:5557"], "tcp://db1:6000") == "tcp://db1:6000"
    with pytest.raises(ConfigurationError, match="bad endpoint"):
        advertised("tcp://*:6000", ["tcp://127.0.0.1:5557"], "db1:6000")


@pytest.mark.timeout(30)
def test_a_wait_for_a_service_nobody_announces_times_out(server: FabricServer) -> None:
    with _member(server) as member, pytest.raises(RequestTimeout, match="'nobody'"):
        member.wait("nobody", timeout=0.3)


@pytest.mark.timeout(60)
def test_the_cli_runs_a_fabric_and_lists_its_services(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "fabric", "--bind", endpoint],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None and "fabric on" in proc.stderr.readline()
        with Fabric(endpoint, interval=FAST) as member:
            member.announce("orders", "tcp://10.1.1.1:5000", meta={"q": 1})
            member.announce("search", "tcp://10.1.1.2:5001", status="maintenance")
            member.watch(None, lambda event, entry: None)
            wait_until(lambda: len(member.lookup(None)) == 2, 10, "both announcements back from the fabric")
            result = CliRunner().invoke(main, ["services", "--fabric", endpoint])
            assert result.exit_code == 0, result.output
            lines = result.output.splitlines()
            assert lines[0].split() == ["SERVICE", "STATUS", "ENDPOINT", "META"]
            assert lines[1].split() == ["orders", "up", "tcp://10.1.1.1:5000", '{"q":', "1}"]
            assert lines[2].split() == ["search", "maintenance", "tcp://10.1.1.2:5001"]
            watched = CliRunner().invoke(
                main,
                ["services", "--fabric", endpoint, "--service", "orders", "--json", "--watch", "0.1", "--samples", "2"],
            )
            assert watched.exit_code == 0, watched.output
            rows = [json.loads(line) for line in watched.output.splitlines() if line.startswith("{")]
            assert [r["service"] for r in rows] == ["orders", "orders"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.mark.timeout(30)
def test_services_says_when_no_fabric_server_answers() -> None:
    result = CliRunner().invoke(main, ["services", "--fabric", free_tcp_endpoint(), "--listen", "0.3"])
    assert result.exit_code == 1
    assert "no fabric server answered" in result.output


@pytest.mark.timeout(30)
def test_a_fabric_server_exposes_its_counters_to_prometheus(server: FabricServer) -> None:
    from urllib.request import urlopen

    from zmqkit.metrics import serve_metrics

    with _member(server) as member, serve_metrics(server, port=0, bind="127.0.0.1", service="fabric") as metrics:
        member.announce("orders", "tcp://10.1.1.1:5000")
        wait_until(lambda: server.stats()["entries"] == 1, 5, "the announcement in the fabric's table")
        text = urlopen(metrics.url, timeout=5).read().decode()
    assert 'zmqkit_fabric_entries{endpoint="' in text
    assert "zmqkit_fabric_announcements_total{" in text
    assert "zmqkit_fabric_malformed_total{" in text


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(30)
def test_beacons_need_no_fabric_server() -> None:
    # 127.255.255.255: the beacons stay on this host (a multi-host test runs in network namespaces).
    beacons = f"udp://127.255.255.255:{_free_udp_port()}"
    with Fabric(beacons, interval=60) as announcing, Fabric(beacons, interval=FAST) as finding:
        members = Members(finding, "thumbs")
        announcing.announce("thumbs", "tcp://10.9.3.1:6000")
        wait_until(lambda: members.up() == ["tcp://10.9.3.1:6000"], 5, "the beacon heard")
        # A member that joins later asks; with a heartbeat every 60 s only the answer can explain what it knows.
        with Fabric(beacons, interval=FAST) as late:
            late.watch("thumbs", lambda event, entry: None)
            assert late.wait_synced(5)
            wait_until(lambda: late.lookup("thumbs"), 5, "the late member told at once")
        announcing.announce("thumbs", "tcp://10.9.3.1:6000", status="down")
        wait_until(lambda: members.current()[1] == {}, 5, "down heard")
        members.close()


@pytest.mark.timeout(30)
def test_a_malformed_beacon_is_counted_and_ignored() -> None:
    import socket

    port = _free_udp_port()
    with Fabric(f"udp://127.255.255.255:{port}", interval=FAST) as member:
        member.watch(None, lambda event, entry: None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            for junk in (b"junk", ANNOUNCE + b"{oops", ANNOUNCE + b'{"service": 5}'):
                raw.sendto(junk, ("127.255.255.255", port))
        wait_until(lambda: member.malformed == 3, 5, "three bad beacons counted")
        member.announce("ok", "tcp://10.9.3.2:1")
        wait_until(lambda: member.lookup("ok"), 5, "a good beacon still heard")


def test_beacon_fabrics_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Fabric(["udp://*:5670", "tcp://127.0.0.1:5557"])
    with pytest.raises(ConfigurationError, match="real UDP port"):
        Fabric("udp://*:0")
    keys = Curve.client(Curve.server(Curve.client(b"x" * 40).keys, allow="*").keys.public)
    with pytest.raises(ConfigurationError, match="CURVE"):
        Fabric("udp://127.255.255.255:5670", curve=keys)


@pytest.mark.timeout(60)
def test_two_fabric_servers_one_killed_a_server_started_afterwards_is_still_found(tmp_path: Path) -> None:
    from zmqkit.patterns import Client, Server

    endpoints = [free_tcp_endpoint(), free_tcp_endpoint()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "zmqkit", "fabric", "--bind", endpoint],
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for endpoint in endpoints
    ]
    try:
        for proc in procs:
            assert proc.stderr is not None and "fabric on" in proc.stderr.readline()
        with Fabric(endpoints, interval=FAST) as fabric:
            procs[0].kill()  # kill -9: no goodbye from the fabric server
            procs[0].wait(10)
            with (
                Server("tcp://127.0.0.1:0", lambda body: b"echo " + body, announce="echo", fabric=fabric) as server,
                Client(service="echo", fabric=fabric, timeout=5) as client,
            ):
                server.start()
                assert client.request(b"hi") == b"echo hi"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(60)
def test_a_pattern_following_a_service_on_a_fabric_that_refuses_its_keys_says_so(tmp_path: Path) -> None:
    """A client, a cache client and a worker whose keys the fabric refuses raise AuthenticationFailed, not
    "nothing announced" (the fabric is up; it just will not talk to them)."""
    for name in ("fabric", "stranger"):
        generate_keys(name, tmp_path)
    security = Curve.server(tmp_path / "fabric.key_secret", allow=[Curve.client(b"x" * 40).keys.public])
    with FabricServer("tcp://127.0.0.1:0", curve=security) as server:
        stranger = Curve.client(tmp_path / "fabric.key", tmp_path / "stranger.key_secret")
        with Fabric(server.endpoint, interval=FAST, curve=stranger) as fabric:
            with Client(service="echo", fabric=fabric, timeout=5) as client, pytest.raises(AuthenticationFailed):
                client.request(b"x")
            cache = CacheClient(service="cache", fabric=fabric, timeout=5)
            with cache, pytest.raises(AuthenticationFailed, match="not allowed"):
                cache.get("k")
            with Worker(lambda body: body, service="emails", fabric=fabric) as worker:
                wait_until(lambda: fabric.refusal() is not None, 10, "the fabric's refusal seen")
                with pytest.raises(AuthenticationFailed, match="not allowed"):
                    _ = worker.endpoint
        assert server.stats()["auth_failures"] >= 1


def test_a_loopback_bind_announced_on_a_fabric_other_hosts_use_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="zmqkit.patterns.presence.fabric"):
        assert advertised("tcp://127.0.0.1:11311", ["tcp://127.0.0.1:5557"]) == "tcp://127.0.0.1:11311"
        assert not caplog.records  # a fabric on this host only: loopback is right
        assert advertised("tcp://127.0.0.1:11311", ["tcp://10.9.9.9:5557"]) == "tcp://127.0.0.1:11311"
    [warning] = caplog.records
    assert "only this host can connect to it" in warning.getMessage() and "tcp://*:PORT" in warning.getMessage()
