"""Request-reply found by name across hosts (Linux network namespaces): a server on a new host serves clients on
another within two heartbeat intervals; a host cut off expires while calls go on, and returns when healed; with
two fabric servers, losing one host's loses no discovery."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from zmqkit.testing import Host, HostProcess, Hosts, wait_until

PEERS = str(Path(__file__).with_name("reqrep_peers.py"))
FABRIC_PORT = 5557
INTERVAL = 0.5  # heartbeat interval of every member (seconds); entries expire after 3 missed


def _fabric(host: Host, cwd: Path) -> str:
    host.python([PEERS, "fabric", f"tcp://*:{FABRIC_PORT}"], cwd=cwd).wait_line("READY", 15)
    return host.endpoint(FABRIC_PORT)


def _server(host: Host, fabrics: list[str], cwd: Path) -> HostProcess:
    server = host.python([PEERS, "server", ",".join(fabrics), str(INTERVAL), host.name], cwd=cwd)
    assert server.wait_line("READY", 15) == host.endpoint(5600)  # the host's own address, found by route
    return server


def _client(host: Host, fabrics: list[str], cwd: Path) -> HostProcess:
    return host.python([PEERS, "client", ",".join(fabrics), str(INTERVAL)], cwd=cwd, stdin=subprocess.PIPE)


def _calls(client: HostProcess, n: int = 20) -> tuple[set[str], int]:
    """Make ``n`` calls from the client's host: the names of the servers that answered, and the failures."""
    assert client.stdin is not None
    client.stdin.write(f"{n}\n")
    client.stdin.flush()
    names, _, failed = client.wait_line("CALLS", 60).partition(" FAILED ")
    return (set() if names == "-" else set(names.split(","))), int(failed)


@pytest.mark.timeout(90)
def test_a_server_on_a_new_host_serves_clients_on_another_within_two_heartbeats(hosts: Hosts, tmp_path: Path) -> None:
    h1, h2 = hosts
    fabrics = [_fabric(h1, tmp_path)]
    _server(h2, fabrics, tmp_path)
    client = _client(h1, fabrics, tmp_path)
    assert _calls(client) == ({"h2"}, 0)
    h3 = hosts.add()
    _server(h3, fabrics, tmp_path)
    started = time.monotonic()
    served: set[str] = set()
    while "h3" not in served and time.monotonic() - started < 10:
        names, failed = _calls(client, 10)
        assert failed == 0
        served |= names
    took = time.monotonic() - started
    assert "h3" in served, "the server on the new host never got a request"
    assert took <= 2 * INTERVAL + 1.0, f"the new host served after {took:.2f}s (two heartbeats: {2 * INTERVAL}s)"


@pytest.mark.timeout(120)
def test_a_host_cut_off_expires_calls_go_on_and_it_returns_when_healed(hosts: Hosts, tmp_path: Path) -> None:
    h1, h2 = hosts
    h3 = hosts.add()
    fabrics = [_fabric(h1, tmp_path)]
    _server(h2, fabrics, tmp_path)
    _server(h3, fabrics, tmp_path)
    client = _client(h1, fabrics, tmp_path)
    wait_until(lambda: _calls(client)[0] == {"h2", "h3"}, 15, "both servers answering")
    h3.cut()
    # Calls sent to the cut host fail over after their attempt timeout; none fails. Once its entry expires
    # (3 missed heartbeats), it gets none.
    failures = 0

    def only_h2() -> bool:
        nonlocal failures
        names, failed = _calls(client)
        failures += failed
        return names == {"h2"}

    wait_until(only_h2, 30, "the cut host's entry expired and calls went to the rest")
    assert failures == 0
    assert _calls(client, 50) == ({"h2"}, 0)
    h3.heal()
    wait_until(lambda: "h3" in _calls(client)[0], 30, "the healed host announced again and served")


@pytest.mark.timeout(120)
def test_two_fabric_servers_one_host_cut_discovery_goes_on(hosts: Hosts, tmp_path: Path) -> None:
    h1, h2 = hosts
    h3, h4 = hosts.add(), hosts.add()
    fabrics = [_fabric(h1, tmp_path), _fabric(h2, tmp_path)]
    _server(h3, fabrics, tmp_path)
    client = _client(h3, fabrics, tmp_path)
    assert _calls(client) == ({"h3"}, 0)
    h1.cut()  # one fabric server gone: a server started now is found through the other
    _server(h4, fabrics, tmp_path)
    wait_until(lambda: "h4" in _calls(client)[0], 15, "the server started after the cut found through h2")
    assert _calls(client, 50)[1] == 0


@pytest.mark.timeout(120)
def test_the_only_fabric_servers_host_cut_and_healed_calls_go_on_throughout(hosts: Hosts, tmp_path: Path) -> None:
    """Cut for longer than the members' expiry (3 missed heartbeats) and than the connections' ZMTP heartbeat
    timeout: the client, which hears no fabric server, keeps the server it knew; no call fails."""
    h1, h2 = hosts
    h3 = hosts.add()
    fabrics = [_fabric(h1, tmp_path)]
    _server(h2, fabrics, tmp_path)
    client = _client(h3, fabrics, tmp_path)
    wait_until(lambda: _calls(client)[0] == {"h2"}, 15, "the server answering")
    failures = 0

    def calls_for(seconds: float) -> None:
        nonlocal failures
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            names, failed = _calls(client, 10)
            failures += failed
            assert names == {"h2"}, f"calls answered by {names or 'nobody'}"

    h1.cut()
    calls_for(3 * INTERVAL * 3 + 6.0)  # past three expiry windows and the 6 s ZMTP heartbeat timeout
    h1.heal()
    calls_for(3 * INTERVAL * 3 + 3.0)  # past the fresh window the entry gets when the fabric is heard again
    assert failures == 0
