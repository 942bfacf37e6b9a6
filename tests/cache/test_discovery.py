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


# A node's announcer in its own process: killing it (-9) stops the node's heartbeats while the node itself runs on
# with its data, as when its host is cut off; the fabric then expires it.
ANNOUNCER = """import sys
from zmqkit.patterns.presence.fabric import Fabric
with Fabric(sys.argv[1], interval=0.1) as fabric:
    fabric.announce("cache", sys.argv[2])
    print("announced", flush=True)
    sys.stdin.read()
"""


class Comings:
    """Makes node ``endpoint`` leave the service and return, keeping its data: ``away`` by ``maintenance``
    (announced) or by ``expiry`` (its announcer killed -9)."""

    def __init__(self, fabric: Fabric, endpoint: str, away: str, cwd: Any) -> None:
        self.fabric, self.endpoint, self.kind, self.cwd = fabric, endpoint, away, cwd
        self.announcer: Announcer | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.back()

    def back(self) -> None:
        if self.kind == "maintenance":
            if self.announcer is None:
                self.announcer = Announcer(self.fabric, "cache", [self.endpoint])
            self.announcer.up()
            return
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ANNOUNCER, self.fabric.endpoints[0], self.endpoint],
            cwd=self.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "announced\n"

    def away(self) -> None:
        if self.announcer is not None:
            self.announcer.maintenance()
        elif self.proc is not None:
            self.proc.kill()  # no goodbye: the fabric expires it after its missed heartbeats
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        if self.announcer is not None:
            self.announcer.close()
        self.away()


@contextlib.contextmanager
def joined_late(fabric: Fabric, client: Any, node: CacheNode) -> Iterator[Announcer]:
    """Announce ``node`` (after ``client`` has written: late to it); yields once it is on the client's ring."""
    assert node.endpoint is not None
    announcer = Announcer(fabric, "cache", [node.endpoint])
    try:
        wait_until(lambda: on_ring(client, node.endpoint), 3.0, "the late node on the ring")
        yield announcer
    finally:
        announcer.close()


def ordered(client: Any, *nodes: CacheNode) -> list[str]:
    """The keys whose order over the client's ring is ``nodes`` (their failover order)."""
    order = [node.endpoint for node in nodes]
    keys = [key for key in KEYS if list(client.ring.iter_nodes(client.key_bytes(key))) == order]
    assert keys, f"no key ordered {order}"
    return keys


def owned_by(client: Any, endpoint: str) -> list[str]:
    keys = [key for key in KEYS if client.node_for(key) == endpoint]
    assert keys, f"no key owned by {endpoint}"
    return keys


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_hints", [10_000, 3], ids=["hints", "overflow-flush"])
@pytest.mark.parametrize("away", ["maintenance", "expiry"])
def test_a_node_that_leaves_twice_leaves_no_stale_copy_on_the_node_that_stood_in(
    fabric: Fabric, away: str, max_hints: int, tmp_path: Any
) -> None:
    """X owns the keys; while X is away they are written to Y; X returns (cleaned) and takes newer writes; when
    X leaves again, the keys are read on Y, which must not serve the copies written there in X's place (with
    max_hints=3 the lists overflow: X and Y are flushed instead)."""
    with CacheNode() as x, CacheNode(announce="cache", fabric=fabric) as y:
        x.start()
        y.start()
        assert x.endpoint is not None
        comings = Comings(fabric, x.endpoint, away, tmp_path)
        try:
            with CacheClient(service="cache", fabric=fabric, max_hints=max_hints) as client:
                wait_until(lambda: on_ring(client, x.endpoint), 3.0, "X on the ring")
                owned = owned_by(client, x.endpoint)
                one = owned[0]
                client.set_many({key: "v0" for key in owned})
                for cycle in range(2):  # repeated cycles: leave, return, leave, return
                    stood_in, newest = f"in X's place {cycle}", f"on X {cycle}"
                    comings.away()
                    wait_until(lambda: not on_ring(client, x.endpoint), 5.0, f"X off the ring ({away})")
                    assert client.set_many({key: stood_in for key in owned}) == []  # on Y, hinted for X
                    comings.back()
                    wait_until(lambda: on_ring(client, x.endpoint), 5.0, "X back on the ring")
                    assert set(client.get_many(owned).values()) <= {stood_in}  # X was cleaned of older copies
                    assert client.set_many({key: newest for key in owned}) == []  # on X
                    assert client.set(one, newest)  # the one-key path too
                    with CacheClient([y.endpoint]) as direct:  # what Y still holds
                        assert set(direct.get_many(owned).values()) <= {stood_in}
                    comings.away()
                    wait_until(lambda: not on_ring(client, x.endpoint), 5.0, f"X off the ring again ({away})")
                    assert client.get(one) in (newest, None), "a stale read through the one-key path"
                    values = client.get_many(owned)
                    stale = [key for key, value in values.items() if value != newest]
                    assert not stale, f"cycle {cycle}: {len(stale)} stale reads, e.g. {values[stale[0]]!r}"
                    comings.back()
                    wait_until(lambda: on_ring(client, x.endpoint), 5.0, "X back on the ring")
        finally:
            comings.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "max_hints", [10_000, 100, 3, 0], ids=["listed", "released-early", "overflow-flush", "unlisted-flush"]
)
@pytest.mark.parametrize("away", ["maintenance", "expiry"])
def test_a_node_new_after_the_first_write_leaves_no_stale_copy_on_the_node_it_took_keys_from(
    fabric: Fabric, away: str, max_hints: int, tmp_path: Any
) -> None:
    """Y owns every key and holds the client's first writes; N, new to the client, joins and takes some of
    them; the client writes those to N; when N leaves, they are read on Y again, which must not serve the
    copies it kept from before N joined. With max_hints=100, N's list is released in batches while N stays (Y
    deletes them the next time the client calls it); with 3, Y's own list overflows: Y is flushed; with 0 there
    are no lists: Y is flushed when N leaves."""
    with CacheNode() as n, CacheNode(announce="cache", fabric=fabric) as y:
        n.start()
        y.start()
        assert n.endpoint is not None and y.endpoint is not None
        with CacheClient(service="cache", fabric=fabric, max_hints=max_hints) as client:
            wait_until(lambda: on_ring(client, y.endpoint), 3.0, "Y on the ring")
            assert client.set_many({key: "before N" for key in KEYS}) == []  # all on Y
            comings = Comings(fabric, n.endpoint, away, tmp_path)
            try:
                wait_until(lambda: on_ring(client, n.endpoint), 5.0, "N on the ring")
                taken = owned_by(client, n.endpoint)
                others = [key for key in KEYS if key not in set(taken)]
                for start in range(0, len(taken), 50):
                    assert client.set_many({key: "on N" for key in taken[start : start + 50]}) == []
                    assert client.get(others[0]) in ("before N", None)  # a call to Y: it deletes what was released
                assert client.set(taken[0], "on N")  # the one-key path too
                with CacheClient([y.endpoint]) as direct:  # Y still holds the older copies (unless released)
                    held = direct.get_many(taken)
                assert set(held.values()) <= {"before N"}
                if max_hints == 10_000:
                    assert len(held) == len(taken)  # the case this test is about is really set up
                elif max_hints == 100:
                    assert len(held) < len(taken)  # released in batches of 100 (the rest when N leaves)
                comings.away()
                wait_until(lambda: not on_ring(client, n.endpoint), 5.0, f"N off the ring ({away})")
                assert client.get(taken[0]) in ("on N", None), "a stale read through the one-key path"
                values = client.get_many(taken)
                stale = [key for key, value in values.items() if value != "on N"]
                assert not stale, f"{len(stale)} stale reads, e.g. {values[stale[0]]!r}"
                kept = client.get_many(others)
                if max_hints >= 100:  # listed or released early: only N's keys were deleted on Y
                    assert kept == {key: "before N" for key in others}
                assert set(kept.values()) <= {"before N"}
            finally:
                comings.close()


def test_a_late_node_stays_late_after_its_first_leave(fabric: Fabric) -> None:
    """N, new after the first write, leaves with nothing written to it and comes back; only then is it written
    to. Y still holds the copies from before N first joined: N's second leave must not expose them."""
    with CacheNode() as n, CacheNode(announce="cache", fabric=fabric) as y:
        n.start()
        y.start()
        assert n.endpoint is not None
        with CacheClient(service="cache", fabric=fabric) as client:
            wait_until(lambda: on_ring(client, y.endpoint), 3.0, "Y on the ring")
            assert client.set_many({key: "before N" for key in KEYS}) == []
            with joined_late(fabric, client, n) as announcer:
                taken = owned_by(client, n.endpoint)
                assert set(client.get_many(taken).values()) == set()  # N was flushed, serves: nothing written
                announcer.maintenance()
                wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring")
                announcer.up()
                wait_until(lambda: on_ring(client, n.endpoint), 3.0, "N back on the ring")
                assert client.set_many({key: "on N" for key in taken}) == []
                announcer.maintenance()
                wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring again")
                assert set(client.get_many(taken).values()) <= {"on N"}


def test_two_late_nodes_in_a_row_leave_no_stale_copy_behind_them(fabric: Fabric) -> None:
    """Keys ordered N2, N1, Y, first written on Y; N1 then N2 join; the keys are written to N2 only. When N2
    leaves they go to N1 (never written them), and when N1 leaves too, to Y: neither may serve an older copy."""
    with CacheNode() as n1, CacheNode() as n2, CacheNode(announce="cache", fabric=fabric) as y:
        for node in (n1, n2, y):
            node.start()
        with CacheClient(service="cache", fabric=fabric) as client:
            wait_until(lambda: on_ring(client, y.endpoint), 3.0, "Y on the ring")
            assert client.set_many({key: "before" for key in KEYS}) == []
            with joined_late(fabric, client, n1) as a1:
                client.get_many(KEYS)  # N1 rejoined (flushed) and serves
                with joined_late(fabric, client, n2) as a2:
                    keys = ordered(client, n2, n1, y)
                    assert client.set_many({key: "on N2" for key in keys}) == []
                    a2.maintenance()
                    wait_until(lambda: not on_ring(client, n2.endpoint), 3.0, "N2 off the ring")
                    assert set(client.get_many(keys).values()) <= {"on N2"}
                    a1.maintenance()
                    wait_until(lambda: not on_ring(client, n1.endpoint), 3.0, "N1 off the ring")
                    values = client.get_many(keys)
                    assert set(values.values()) <= {"on N2"}, f"{len(values)} stale reads from Y"


@pytest.mark.parametrize("last", ["set", "delete"])
def test_a_late_node_that_stops_answering_hands_its_keys_back_before_reads_fail_over(fabric: Fabric, last: str) -> None:
    """N, late, is written to (or its keys deleted), then stops answering while still announced up: once the
    client gives up on it, reads of its keys fail over to Y, which must not serve the copies from before N."""
    with CacheNode() as n, CacheNode(announce="cache", fabric=fabric) as y:
        n.start()
        y.start()
        assert n.endpoint is not None
        with CacheClient(service="cache", fabric=fabric, timeout=0.3, retries=1, dead_timeout=30) as client:
            wait_until(lambda: on_ring(client, y.endpoint), 3.0, "Y on the ring")
            assert client.set_many({key: "before N" for key in KEYS}) == []
            with joined_late(fabric, client, n):
                taken = owned_by(client, n.endpoint)
                if last == "set":
                    assert client.set_many({key: "on N" for key in taken}) == []
                else:
                    assert client.delete_many(taken) == 0  # N was flushed: nothing to delete there
                n.stop()
                first = client.get(taken[0])  # times out twice: N is dead, the read fails over to Y
                assert client.node_state()[n.endpoint] == "dead"
                values = client.get_many(taken)
                assert first in ("on N", None) and set(values.values()) <= {"on N"}, "stale reads from Y"


@pytest.mark.parametrize("gone", ["dead", "away"])
@pytest.mark.parametrize("last", ["set", "delete"])
def test_with_replicas_the_copy_behind_a_late_node_is_never_read_once_its_partner_is_gone(
    fabric: Fabric, last: str, gone: str
) -> None:
    """replicas=2, keys ordered N, X, Z, first written on X and Z; N (late) joins and the keys are written (or
    deleted) on N and X. X then dies (or leaves): a get that misses on N falls back to Z, and once N leaves too
    Z serves them. Z never took the newer write: its older copy must never be read."""
    with CacheNode() as n, CacheNode() as x, CacheNode(announce="cache", fabric=fabric) as z:
        for node in (n, x, z):
            node.start()
        assert x.endpoint is not None
        ax = Announcer(fabric, "cache", [x.endpoint])
        try:
            with CacheClient(service="cache", fabric=fabric, replicas=2, timeout=0.3, dead_timeout=30) as client:
                both = lambda: on_ring(client, x.endpoint) and on_ring(client, z.endpoint)  # noqa: E731
                wait_until(both, 3.0, "X and Z on the ring")
                assert client.set_many({key: "before N" for key in KEYS}) == []
                with joined_late(fabric, client, n) as an:
                    keys = ordered(client, n, x, z)
                    if last == "set":
                        assert client.set_many({key: "newer" for key in keys}) == []
                    else:
                        client.delete_many(keys)
                    expected = {"newer"} if last == "set" else set()
                    if gone == "dead":
                        x.stop()
                        client.set(next(k for k in KEYS if client.node_for(k) == x.endpoint), "probe")  # given up
                    else:
                        ax.maintenance()
                        wait_until(lambda: not on_ring(client, x.endpoint), 3.0, "X off the ring")
                    assert client.node_state()[x.endpoint] == gone
                    assert client.node_state()[n.endpoint] == "alive"
                    assert client.get(keys[0]) in expected | {None}, "a stale read through the one-key path"
                    assert set(client.get_many(keys).values()) <= expected, "stale reads with N up"
                    an.maintenance()
                    wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring")
                    assert set(client.get_many(keys).values()) <= expected, "stale reads from Z"
        finally:
            ax.close()


def test_a_late_nodes_leave_keeps_the_newest_copy_on_the_node_before_it(fabric: Fabric) -> None:
    """Keys ordered A, N, Y (N late): while A is away they are written to N; A returns and takes a newer write;
    when N leaves, A (before N in the keys' order) keeps that newest copy."""
    with CacheNode() as a, CacheNode() as n, CacheNode(announce="cache", fabric=fabric) as y:
        for node in (a, n, y):
            node.start()
        assert a.endpoint is not None
        aa = Announcer(fabric, "cache", [a.endpoint])
        try:
            with CacheClient(service="cache", fabric=fabric) as client:
                wait_until(lambda: on_ring(client, a.endpoint), 3.0, "A on the ring")
                assert client.set_many({key: "first" for key in KEYS}) == []
                with joined_late(fabric, client, n) as an:
                    keys = ordered(client, a, n, y)
                    aa.maintenance()
                    wait_until(lambda: not on_ring(client, a.endpoint), 3.0, "A off the ring")
                    assert client.set_many({key: "on N" for key in keys}) == []
                    aa.up()
                    wait_until(lambda: on_ring(client, a.endpoint), 3.0, "A back on the ring")
                    assert client.set_many({key: "newest" for key in keys}) == []
                    an.maintenance()
                    wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring")
                    assert client.get_many(keys) == {key: "newest" for key in keys}
        finally:
            aa.close()


def test_with_replicas_a_late_nodes_leave_deletes_the_old_copy_and_keeps_the_other_replica(fabric: Fabric) -> None:
    """replicas=2, keys whose order is N, X, Z: first written to X and Z; N, new to the client, joins and the
    keys go to N and X; when N leaves they go to X and Z again: X keeps its current copy, Z deletes its older
    one, so with X gone too, Z serves a miss, never the older value."""
    with (
        CacheNode() as n,
        CacheNode() as x,
        CacheNode(announce="cache", fabric=fabric) as z,
    ):
        for node in (n, x, z):
            node.start()
        assert n.endpoint is not None and x.endpoint is not None and z.endpoint is not None
        ax = Announcer(fabric, "cache", [x.endpoint])
        an: Announcer | None = None
        try:
            with CacheClient(service="cache", fabric=fabric, replicas=2) as client:
                wait_until(lambda: on_ring(client, x.endpoint), 3.0, "X on the ring")
                assert client.set_many({key: "before N" for key in KEYS}) == []  # every key on X and Z
                an = Announcer(fabric, "cache", [n.endpoint])
                wait_until(lambda: on_ring(client, n.endpoint), 3.0, "N on the ring")
                order = [n.endpoint, x.endpoint, z.endpoint]
                keys = [k for k in KEYS if list(client.ring.iter_nodes(client.key_bytes(k))) == order]
                assert keys, "no key ordered N, X, Z"
                assert client.set_many({key: "on N" for key in keys}) == []  # on N and X
                an.maintenance()
                wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring")
                assert client.get_many(keys) == {key: "on N" for key in keys}  # from X, which kept its copy
                ax.maintenance()
                wait_until(lambda: not on_ring(client, x.endpoint), 3.0, "only Z on the ring")
                values = client.get_many(keys)
                stale = [key for key, value in values.items() if value != "on N"]
                assert not stale, f"{len(stale)} stale reads from Z"
        finally:
            ax.close()
            if an is not None:
                an.close()


def test_the_asyncio_client_reads_no_stale_copy_when_a_late_node_leaves(fabric: Fabric) -> None:
    """The late node's case through the asyncio client (the logic is the core's; this drives it from asyncio)."""

    async def scenario(n: CacheNode, y: CacheNode) -> None:
        assert n.endpoint is not None and y.endpoint is not None
        async with AsyncCacheClient(service="cache", fabric=fabric) as client:
            wait_until(lambda: on_ring(client, y.endpoint), 3.0, "Y on the ring")
            assert await client.set_many({key: "before N" for key in KEYS}) == []
            announcer = Announcer(fabric, "cache", [n.endpoint])
            try:
                wait_until(lambda: on_ring(client, n.endpoint), 3.0, "N on the ring")
                taken = owned_by(client, n.endpoint)
                await asyncio.gather(*(client.set(key, "on N") for key in taken))
                announcer.maintenance()
                wait_until(lambda: not on_ring(client, n.endpoint), 3.0, "N off the ring")
                values = await asyncio.gather(*(client.get(key) for key in taken))
                stale = [value for value in values if value not in ("on N", None)]
                assert not stale, f"{len(stale)} stale reads"
            finally:
                announcer.close()

    with CacheNode() as n, CacheNode(announce="cache", fabric=fabric) as y:
        n.start()
        y.start()
        asyncio.run(scenario(n, y))


def test_with_replicas_the_copy_written_in_a_returning_nodes_place_is_never_read(fabric: Fabric) -> None:
    """replicas=2, keys whose order is X, Y, Z: while X is away they go to Y and Z; X returns and the keys go to
    X and Y again, so Z's copies go stale; when X and Y both leave, Z must not serve them."""
    with CacheNode() as x, CacheNode() as y, CacheNode(announce="cache", fabric=fabric) as z:
        for node in (x, y, z):
            node.start()
        assert x.endpoint is not None and y.endpoint is not None and z.endpoint is not None
        ax, ay = Announcer(fabric, "cache", [x.endpoint]), Announcer(fabric, "cache", [y.endpoint])
        try:
            with CacheClient(service="cache", fabric=fabric, replicas=2) as client:
                both = lambda: on_ring(client, x.endpoint) and on_ring(client, y.endpoint)  # noqa: E731
                wait_until(both, 3.0, "X and Y on the ring")
                order = [x.endpoint, y.endpoint, z.endpoint]
                keys = [k for k in KEYS if list(client.ring.iter_nodes(client.key_bytes(k))) == order]
                assert keys, "no key ordered X, Y, Z"
                ax.maintenance()
                wait_until(lambda: not on_ring(client, x.endpoint), 3.0, "X off the ring")
                assert client.set_many({key: "old" for key in keys}) == []  # on Y and Z, hinted for X
                ax.up()
                wait_until(lambda: on_ring(client, x.endpoint), 3.0, "X back on the ring")
                assert client.set_many({key: "new" for key in keys}) == []  # on X and Y
                with CacheClient([z.endpoint]) as direct:
                    assert set(direct.get_many(keys).values()) == {"old"}  # what Z still holds
                ax.maintenance()
                ay.maintenance()
                neither = lambda: not on_ring(client, x.endpoint) and not on_ring(client, y.endpoint)  # noqa: E731
                wait_until(neither, 3.0, "only Z on the ring")
                values = client.get_many(keys)
                stale = [key for key, value in values.items() if value != "new"]
                assert not stale, f"{len(stale)} stale reads from Z"
        finally:
            ax.close()
            ay.close()


def test_a_static_client_reads_no_stale_copy_when_a_node_restarts_twice(tcp_endpoint: str) -> None:
    """No membership: X stops answering (restarted at its endpoint, empty), the key goes to Y; X is back, takes
    the newer write, then stops again: the read falls over to Y, which must not serve the older copy."""
    endpoint = tcp_endpoint
    with CacheNode() as y:
        y.start()
        assert y.endpoint is not None
        x = CacheNode(endpoint)
        x.start()
        with CacheClient([endpoint, y.endpoint], timeout=0.3, retries=0, dead_timeout=0) as client:
            key = next(k for k in KEYS if client.node_for(k) == endpoint)
            try:
                for cycle in range(2):
                    x.stop()
                    assert client.set(key, f"old {cycle}")  # times out on X, then goes to Y (hinted for X)
                    assert client.node_state()[endpoint] in ("dead", "rejoining")
                    x = CacheNode(endpoint)
                    x.start()
                    wait_until(lambda: endpoint in client.ping(), 5.0, "X answering the client again")
                    assert client.set(key, f"new {cycle}")  # X rejoins (cleaned), then takes the write
                    assert x.stats()["items"] == 1
                    x.stop()
                    assert client.get(key) in (f"new {cycle}", None), f"cycle {cycle}: a stale read from Y"
                    x = CacheNode(endpoint)
                    x.start()
            finally:
                x.stop()


def test_the_asyncio_client_reads_no_stale_copy_when_a_node_leaves_twice(fabric: Fabric) -> None:
    """The same as above through the asyncio client (the logic is the core's; this drives it from asyncio)."""

    async def scenario(x: CacheNode, announcer: Announcer) -> None:
        assert x.endpoint is not None
        async with AsyncCacheClient(service="cache", fabric=fabric) as client:
            wait_until(lambda: on_ring(client, x.endpoint), 3.0, "X on the ring")
            owned = owned_by(client, x.endpoint)
            announcer.maintenance()
            wait_until(lambda: not on_ring(client, x.endpoint), 3.0, "X off the ring")
            assert await client.set_many({key: "old" for key in owned}) == []
            announcer.up()
            wait_until(lambda: on_ring(client, x.endpoint), 3.0, "X back on the ring")
            assert await client.set_many({key: "new" for key in owned}) == []
            announcer.maintenance()
            wait_until(lambda: not on_ring(client, x.endpoint), 3.0, "X off the ring again")
            values = await asyncio.gather(*(client.get(key) for key in owned))
            stale = [value for value in values if value not in ("new", None)]
            assert not stale, f"{len(stale)} stale reads"
            assert set((await client.get_many(owned)).values()) <= {"new"}

    with CacheNode() as x, CacheNode(announce="cache", fabric=fabric) as y:
        x.start()
        y.start()
        assert x.endpoint is not None
        announcer = Announcer(fabric, "cache", [x.endpoint])
        try:
            asyncio.run(scenario(x, announcer))
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
