"""The cache ring follows membership across hosts: nodes on their own hosts announce "cache" on a fabric
server on another, a client on a third finds them by name. Every peer runs inside a host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zmqkit.testing import Host, HostProcess, Hosts

PEERS = str(Path(__file__).with_name("cache_peers.py"))
FABRIC_PORT, NODE_PORT = 5557, 11311


def zmqkit(host: Host, cwd: Path, *args: str) -> HostProcess:
    return host.run([sys.executable, "-m", "zmqkit", *args], cwd=cwd, stderr=subprocess.STDOUT)


def fabric_on(host: Host, cwd: Path) -> str:
    server = zmqkit(host, cwd, "fabric", "--bind", f"tcp://*:{FABRIC_PORT}")
    server.wait_line("fabric on", 15)
    return host.endpoint(FABRIC_PORT)


def nodes_on(host: Host, cwd: Path, fabric: str, count: int = 1) -> list[str]:
    """``count`` nodes announcing "cache" on ``host``; the endpoints they announce."""
    serve = zmqkit(host, cwd, "cache", "serve", "--bind", f"tcp://*:{NODE_PORT}", "--nodes", str(count),
                   "--announce", "cache", "--fabric", fabric)  # fmt: skip
    lines = [serve.wait_line("cache node listening on", 15) for _ in range(count)]
    return [line.split("announced as ")[1] for line in lines]


def result(client: HostProcess) -> dict[str, object]:
    return json.loads(client.wait_line("RESULT", 60))


@pytest.mark.timeout(120)
def test_a_node_added_on_a_new_host_takes_about_a_quarter_of_the_keys(hosts: Hosts, tmp_path: Path) -> None:
    h1, h2 = hosts
    fabric = fabric_on(h1, tmp_path)
    assert all(ep.startswith(f"tcp://{h1.address}:") for ep in nodes_on(h1, tmp_path, fabric, 3))
    client = h2.python([PEERS, "grow", fabric, "3"], cwd=tmp_path)
    client.wait_line("READY", 30)
    h3 = hosts.add()
    (added,) = nodes_on(h3, tmp_path, fabric)
    assert added == h3.endpoint(NODE_PORT)  # a bind to * announces the host's own address
    measured = result(client)
    print("node added on a new host:", measured)
    assert measured["new"] == added
    assert 0.15 <= float(measured["moved"]) <= 0.35, f"{measured['moved']:.1%} of the keys moved"  # type: ignore[str-format]
    assert measured["all_to_new"], "a key moved between two old nodes"
    assert measured["wrong"] == [] and measured["misses"], measured
    assert client.wait(10) == 0


@pytest.mark.timeout(150)
def test_a_node_host_cut_and_healed_while_a_client_writes_gives_no_stale_read(hosts: Hosts, tmp_path: Path) -> None:
    h1, h2 = hosts
    h3 = hosts.add()
    fabric = fabric_on(h1, tmp_path)
    nodes_on(h1, tmp_path, fabric, 2)
    (cut_node,) = nodes_on(h2, tmp_path, fabric)
    client = h3.python([PEERS, "cut", fabric, "3"], cwd=tmp_path)
    client.wait_line("READY", 30)
    h2.cut()
    assert client.wait_line("AWAY", 30) == cut_node  # expired after the fabric's missed-heartbeat limit
    client.wait_line("WRITTEN", 30)  # written while it is away
    h2.heal()
    measured = result(client)
    print("host cut and healed:", measured)
    assert measured["old_on_returning"], f"the healed node held no old value: nothing was tested ({measured})"
    assert measured["served_after_return"], f"the healed node served no read: nothing was tested ({measured})"
    assert measured["stale"] == 0, measured
    assert client.wait(10) == 0
