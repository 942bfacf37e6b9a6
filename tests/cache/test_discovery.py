"""The cache ring follows membership: nodes announce "cache" on a fabric, clients find them with service=.

Real nodes, a real fabric server, real sockets on loopback. Fractions of keys moved are measured with
``node_for`` and asserted; no-stale-read is checked against values that a node really still holds.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from zmqkit.asyncio import CacheClient as AsyncCacheClient
from zmqkit.cache import CacheClient, CacheNode
from zmqkit.errors import ConfigurationError, NodeUnavailable
from zmqkit.patterns.presence.fabric import Announcer, Fabric, FabricServer
from zmqkit.testing import wait_until

KEYS = [f"key:{i}" for i in range(1000)]


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with FabricServer("tcp://127.0.0.1:0") as server, Fabric([server.endpoint], interval=0.2) as member:
        yield member


@pytest.fixture
def nodes(fabric: Fabric) -> Iterator[list[CacheNode]]:
    made: list[CacheNode] = []
    for _ in range(3):
        node = CacheNode(announce="cache", fabric=fabric)
        node.start()
        made.append(node)
    yield made
    for node in made:
        node.stop()


def start_node(fabric: Fabric, made: list[CacheNode]) -> CacheNode:
    node = CacheNode(announce="cache", fabric=fabric)
    node.start()
    made.append(node)
    return node


def on_ring(client: Any, endpoint: str) -> bool:
    """Whether ``client``'s ring holds ``endpoint`` (node_for applies membership first, as every call does)."""
    with contextlib.suppress(NodeUnavailable):  # an empty ring
        client.node_for("any")
    return endpoint in client.ring


def placement(client: Any) -> dict[str, str]:
    return {key: client.node_for(key) for key in KEYS}


def test_a_client_finds_the_nodes_and_uses_them(fabric: Fabric, nodes: list[CacheNode]) -> None:
    with CacheClient(service="cache", fabric=fabric) as client:
        assert sorted(client.ring.nodes) == sorted(n.endpoint for n in nodes)
        assert client.set_many({key: key for key in KEYS}) == []
        assert client.get_many(KEYS) == {key: key for key in KEYS}
        owners = placement(client)
        for node in nodes:  # every node holds the keys node_for says it owns, and only those
            assert node.stats()["items"] == sum(1 for ep in owners.values() if ep == node.endpoint)


def test_a_node_joining_moves_about_a_quarter_of_the_keys_all_to_it(fabric: Fabric, nodes: list[CacheNode]) -> None:
    with CacheClient(service="cache", fabric=fabric) as client:
        client.set_many({key: key for key in KEYS})
        before = placement(client)
        fourth = start_node(fabric, nodes)
        wait_until(lambda: on_ring(client, fourth.endpoint), 3.0, "the fourth node on the client's ring")
        after = placement(client)
        moved = [key for key in KEYS if before[key] != after[key]]
        fraction = len(moved) / len(KEYS)
        assert 0.15 <= fraction <= 0.35, f"{fraction:.1%} of the keys moved (expected about 1/4)"
        assert all(after[key] == fourth.endpoint for key in moved), "a key moved between two old nodes"
        # Every read is the value written or a miss (the moved keys are on the new node, which is empty).
        values = client.get_many(KEYS)
        assert all(values[key] == key for key in values)
        assert set(KEYS) - set(values) == set(moved)
        client.set_many({key: key for key in moved})
        assert fourth.stats()["items"] == len(moved)  # the new node really serves its share


def test_a_node_leaving_moves_only_its_own_keys(fabric: Fabric, nodes: list[CacheNode]) -> None:
    with CacheClient(service="cache", fabric=fabric) as client:
        client.set_many({key: key for key in KEYS})
        before = placement(client)
        gone = nodes[0]
        own = {key for key in KEYS if before[key] == gone.endpoint}
        gone.stop()
        wait_until(lambda: not on_ring(client, gone.endpoint), 3.0, "the stopped node off the client's ring")
        after = placement(client)
        moved = {key for key in KEYS if before[key] != after[key]}
        assert moved == own, f"{len(moved)} keys moved, {len(own)} were on the node that left"
        values = client.get_many(KEYS)  # no call fails; the gone node's keys are misses, the rest hits
        assert set(values) == set(KEYS) - own
        assert client.node_state()[gone.endpoint] == "away"


def test_maintenance_gets_no_new_keys_and_no_call_fails(fabric: Fabric, nodes: list[CacheNode]) -> None:
    with CacheClient(service="cache", fabric=fabric, timeout=2.0) as client:
        client.set_many({key: key for key in KEYS})
        leaving = nodes[1]
        leaving.leave()
        wait_until(lambda: not on_ring(client, leaving.endpoint), 3.0, "the node in maintenance off the ring")
        stored = leaving.stats()["items"]
        sets = {name: n for name, n in leaving.stats().items() if name.startswith("cmd_set")}
        assert client.set_many({key: key + "!" for key in KEYS}) == []
        assert client.get_many(KEYS) == {key: key + "!" for key in KEYS}  # its keys are read elsewhere
        assert {name: n for name, n in leaving.stats().items() if name.startswith("cmd_set")} == sets
        assert leaving.stats()["items"] == stored
        assert leaving.endpoint not in set(placement(client).values())


@pytest.mark.parametrize("max_hints", [10_000, 3], ids=["hints", "overflow-flush"])
def test_a_node_that_leaves_and_returns_serves_no_value_older_than_the_clients_writes(
    fabric: Fabric, max_hints: int
) -> None:
    """B leaves the service but keeps its data (as when its host is cut off); the keys it owned are written
    elsewhere meanwhile; when B returns and owns them again, its old copies are never read."""
    with (
        CacheNode() as b,
        CacheNode(announce="cache", fabric=fabric) as a,
        CacheNode(announce="cache", fabric=fabric) as c,
    ):
        for node in (a, b, c):
            node.start()
        assert b.endpoint is not None
        announcer = Announcer(fabric, "cache", [b.endpoint])
        with CacheClient(service="cache", fabric=fabric, max_hints=max_hints) as client:
            wait_until(lambda: on_ring(client, b.endpoint), 3.0, "B on the ring")
            client.set_many({key: "old" for key in KEYS})
            on_b = [key for key in KEYS if client.node_for(key) == b.endpoint]
            assert on_b
            announcer.close()  # down: B is off the ring, but still holds its "old" copies
            wait_until(lambda: not on_ring(client, b.endpoint), 3.0, "B off the ring")
            assert client.set_many({key: "new" for key in KEYS}) == []
            with CacheClient([b.endpoint]) as direct:
                assert direct.get_many(on_b) == {key: "old" for key in on_b}  # B really has the old values
            announcer = Announcer(fabric, "cache", [b.endpoint])
            wait_until(lambda: on_ring(client, b.endpoint), 3.0, "B back on the ring")
            assert [key for key in KEYS if client.node_for(key) == b.endpoint] == on_b
            values = client.get_many(KEYS)
            stale = [key for key, value in values.items() if value != "new"]
            assert not stale, f"{len(stale)} stale reads, e.g. {stale[:3]}"
            assert client.node_state()[b.endpoint] == "alive"
            client.set("key:0", "newer")
            assert client.get("key:0") == "newer"
        announcer.close()


def test_a_client_that_never_saw_a_returning_node_flushes_it_before_reading(fabric: Fabric) -> None:
    """B holds old values written before the client started; the client writes while B is away, then B
    returns: new to this client after its first write, B is flushed before it serves."""
    with CacheNode() as b, CacheNode(announce="cache", fabric=fabric) as a:
        a.start()
        b.start()
        assert b.endpoint is not None
        with CacheClient([b.endpoint]) as direct:
            direct.set_many({key: "old" for key in KEYS})
        with CacheClient(service="cache", fabric=fabric) as client:
            assert client.set_many({key: "new" for key in KEYS}) == []
            announcer = Announcer(fabric, "cache", [b.endpoint])
            try:
                wait_until(lambda: on_ring(client, b.endpoint), 3.0, "B on the ring")
                on_b = [key for key in KEYS if client.node_for(key) == b.endpoint]
                assert on_b
                values = client.get_many(KEYS)
                stale = [key for key, value in values.items() if value != "new"]
                assert not stale, f"{len(stale)} stale reads, e.g. {stale[:3]}"
                assert not set(on_b) & set(values)  # B was flushed: its keys are misses
            finally:
                announcer.close()


def test_node_for_on_a_static_client() -> None:
    with CacheNode() as a, CacheNode() as b:
        endpoints = [a.start(), b.start()]
        with CacheClient(endpoints) as client:
            owners = placement(client)
            assert set(owners.values()) == set(endpoints)
            client.set_many({key: key for key in KEYS})
            assert a.stats()["items"] == sum(1 for ep in owners.values() if ep == endpoints[0])


def test_endpoints_and_a_service_together_or_neither_are_refused(fabric: Fabric) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        CacheClient(["tcp://127.0.0.1:1"], service="cache", fabric=fabric)
    with pytest.raises(ConfigurationError, match="no cache nodes"):
        CacheClient()
    with pytest.raises(ConfigurationError, match="bad service name"):
        CacheNode(announce="two words", fabric=fabric)
    with pytest.raises(ConfigurationError, match="needs announce"):
        CacheNode(advertise="tcp://10.0.0.1:1")


def test_a_client_with_no_node_up_says_so(fabric: Fabric) -> None:
    with CacheClient(service="nobody", fabric=fabric, timeout=0.2) as client:
        with pytest.raises(NodeUnavailable, match="'nobody'"):
            client.get("k")
        with pytest.raises(NodeUnavailable, match="'nobody'"):
            client.node_for("k")


def test_the_asyncio_client_follows_membership(fabric: Fabric, nodes: list[CacheNode]) -> None:
    async def scenario() -> None:
        async with AsyncCacheClient(service="cache", fabric=fabric) as client:
            await client.set_many({key: key for key in KEYS})
            before = placement(client)
            fourth = start_node(fabric, nodes)
            wait_until(lambda: on_ring(client, fourth.endpoint), 3.0, "the fourth node on the asyncio ring")
            moved = [key for key in KEYS if client.node_for(key) != before[key]]
            assert 0.15 <= len(moved) / len(KEYS) <= 0.35
            values = await asyncio.gather(*(client.get(key) for key in KEYS))
            assert all(value in (None, key) for key, value in zip(KEYS, values, strict=True))
            await client.set_many({key: key for key in moved})
            assert await asyncio.gather(*(client.get(key) for key in moved)) == moved
            assert fourth.stats()["items"] == len(moved)

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_cli_serve_announces_and_sigterm_takes_the_node_off_the_ring(fabric: Fabric, tmp_path: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "cache", "serve", "--bind", "tcp://127.0.0.1:0", "--announce", "cache"],
        cwd=tmp_path,
        env={**os.environ, "ZMQKIT_FABRIC": fabric.endpoints[0]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "announced as tcp://127.0.0.1:" in line, line
        endpoint = line.split("announced as ")[1].strip()
        with CacheClient(service="cache", fabric=fabric) as client:
            wait_until(lambda: on_ring(client, endpoint), 3.0, "the CLI node on the ring")
            assert client.set("k", "v") and client.get("k") == "v"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            wait_until(lambda: not on_ring(client, endpoint), 3.0, "the stopped CLI node off the ring")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(60)
def test_cli_client_commands_find_the_nodes_by_service(fabric: Fabric, nodes: list[CacheNode]) -> None:
    from click.testing import CliRunner

    from zmqkit.cli import main

    by_name = ["--service", "cache", "--fabric", fabric.endpoints[0]]
    runner = CliRunner()
    stored = runner.invoke(main, ["cache", "set", "greeting", "hello", *by_name])
    assert stored.exit_code == 0, stored.output
    got = runner.invoke(main, ["cache", "get", "greeting", *by_name])
    assert (got.exit_code, got.output.strip()) == (0, "hello")
    assert sum(node.stats()["items"] for node in nodes) == 1  # on the node that owns it, found by name
    both = runner.invoke(main, ["cache", "get", "greeting", "--nodes", "2", *by_name])
    assert both.exit_code == 2 and "--nodes or --service, not both" in both.output
