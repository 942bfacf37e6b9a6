"""Zero-configuration discovery across hosts: UDP beacons on the hosts' segment, no fabric server. A service
announced on one host is found on another at the address it announced, expires when its host is cut off, and
comes back when the host heals."""

from __future__ import annotations

from pathlib import Path

import pytest

from zmqkit.testing import Hosts

PEERS = str(Path(__file__).with_name("fabric_peers.py"))
INTERVAL = 0.3  # the peers' heartbeat interval (fabric_peers.py); an entry expires after 3 missed


@pytest.mark.timeout(60)
def test_beacons_find_a_service_on_another_host_follow_a_cut_and_a_heal(hosts: Hosts, tmp_path: Path) -> None:
    a, b = hosts[0], hosts[1]
    watcher = b.python([PEERS, "watch", "thumbs"], cwd=tmp_path)
    watcher.wait_line("WATCHING", timeout=20)
    announcer = a.python([PEERS, "announce", "thumbs"], cwd=tmp_path)
    # A bind to every interface is announced at the host's own address on the segment.
    assert announcer.wait_line("ANNOUNCED", timeout=20) == f"tcp://{a.address}:6000"
    assert watcher.wait_line("EVENT", timeout=2 * INTERVAL + 5) == f"added tcp://{a.address}:6000 up"
    a.cut()  # its beacons stop reaching B: the entry expires after three missed heartbeats
    assert watcher.wait_line("EVENT", timeout=3 * INTERVAL + 5) == f"expired tcp://{a.address}:6000 up"
    a.heal()
    assert watcher.wait_line("EVENT", timeout=2 * INTERVAL + 5) == f"added tcp://{a.address}:6000 up"
