"""Cache clients run inside a host by test_cache_discovery.py: ``python cache_peers.py MODE FABRIC [NODES]``.

Each prints ``READY`` once its ring holds NODES nodes and its keys are written, then progress lines, and one
``RESULT {json}`` at the end; every wait is bounded (``wait_until`` raises, the process exits non-zero).
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from zmqkit.cache import CacheClient
from zmqkit.errors import NodeUnavailable
from zmqkit.patterns.presence.fabric import Fabric
from zmqkit.testing import wait_until

KEYS = [f"key:{i}" for i in range(1000)]


def ring_size(client: CacheClient) -> int:
    with contextlib.suppress(NodeUnavailable):
        client.node_for("any")  # applies membership, as every call does
    return len(client.ring)


def grow(client: CacheClient, nodes: int) -> dict[str, Any]:
    """Write the keys on ``nodes`` nodes; when one more joins, measure the keys that moved and read them all."""
    assert client.set_many({key: key for key in KEYS}) == []
    before = {key: client.node_for(key) for key in KEYS}
    print("READY", flush=True)
    wait_until(lambda: ring_size(client) == nodes + 1, 20, "a node more on the ring")
    after = {key: client.node_for(key) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    (new,) = set(after.values()) - set(before.values())
    values = client.get_many(KEYS)
    return {
        "moved": len(moved) / len(KEYS),
        "new": new,
        "all_to_new": all(after[key] == new for key in moved),
        "wrong": [key for key, value in values.items() if value != key],
        "misses": sorted(set(KEYS) - set(values)) == sorted(moved),
    }


def cut(client: CacheClient, nodes: int, fabric: Fabric) -> dict[str, Any]:
    """Write round after round while one node's host is cut off and healed; every read is checked against the
    last value this client wrote for the key (a hit of anything else is a stale read).

    Half the keys are written on every round; the other half once before the cut and once while the node is
    away (off the ring), so the returning node still holds old copies of those: the reads after its return
    show whether they are ever served. The host is healed when this prints ``WRITTEN``; the client then makes
    no call until the fabric lists the node again and it has looked at what the node holds (a call would apply
    its return and clean it first).
    """
    live, parked = KEYS[:500], KEYS[500:]
    latest: dict[str, int] = {}
    stale = 0

    def write(keys: list[str], value: int) -> None:
        assert client.set_many(dict.fromkeys(keys, value)) == []
        latest.update(dict.fromkeys(keys, value))

    def read() -> None:
        nonlocal stale
        stale += sum(1 for key, value in client.get_many(KEYS).items() if value != latest[key])

    def round_() -> None:
        write(live, max(latest.values()) + 1)
        read()

    write(KEYS, 1)
    endpoints = set(client.ring.nodes)
    print("READY", flush=True)
    wait_until(lambda: (round_(), ring_size(client) < nodes)[1], 30, "the cut node off the ring")
    (away,) = endpoints - set(client.ring.nodes)
    print(f"AWAY {away}", flush=True)
    write(parked, max(latest.values()) + 1)
    for _ in range(3):
        round_()  # rounds while it is away
    print("WRITTEN", flush=True)
    listed = lambda: any(e.endpoint == away and e.status == "up" for e in fabric.lookup("cache"))  # noqa: E731
    wait_until(listed, 30, "the healed node announced again")
    with CacheClient([away], timeout=5.0) as direct:  # what it holds, before this client uses it again
        held = direct.get_many(parked)
        old = sum(1 for key, value in held.items() if value != latest[key])
        lookups = lambda: sum(direct.stats()[away][n] for n in ("get_hits", "get_misses"))  # noqa: E731
        before = lookups()
        # Its reconnection may take a few rounds (it is dead to this client meanwhile); then it serves again.
        wait_until(lambda: (round_(), client.node_state()[away] == "alive")[1], 30, "the healed node serving")
        for _ in range(3):
            round_()
        served = lookups() - before
    owned = sum(1 for key in parked if client.node_for(key) == away)
    return {
        "stale": stale,
        "rounds": max(latest.values()),
        "old_on_returning": old,
        "owned": owned,
        "served_after_return": served,
        "away": away,
    }


def main() -> None:
    mode, fabric_address, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fabric = Fabric([fabric_address], interval=0.5)
    with fabric, CacheClient(service="cache", fabric=fabric, timeout=0.5, retries=0, dead_timeout=1.0) as client:
        wait_until(lambda: ring_size(client) == nodes, 20, f"{nodes} nodes on the ring")
        result = grow(client, nodes) if mode == "grow" else cut(client, nodes, fabric)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
