"""HashRing: balance, minimal movement when a node joins, weights, failover order."""

from collections import Counter

import pytest

from zmqkit import ConfigurationError
from zmqkit.cache import HashRing

NODES = [f"tcp://127.0.0.1:{11311 + i}" for i in range(4)]
KEYS = [b"key:%d" % i for i in range(100_000)]


@pytest.mark.timeout(60)
def test_four_equal_nodes_within_ten_percent_of_even() -> None:
    ring = HashRing(NODES)
    counts = Counter(ring.get_node(k) for k in KEYS)
    assert set(counts) == set(NODES)
    for node, n in counts.items():
        assert abs(n - 25_000) <= 2_500, (node, n)


@pytest.mark.timeout(60)
def test_adding_a_fifth_node_moves_at_most_115_percent_of_a_fifth() -> None:
    before = HashRing(NODES)
    after = HashRing([*NODES, "tcp://127.0.0.1:11399"])
    moved = [k for k in KEYS if before.get_node(k) != after.get_node(k)]
    assert len(moved) <= 1.15 * len(KEYS) / 5
    # Keys only move to the new node, never between old ones.
    assert {after.get_node(k) for k in moved} == {"tcp://127.0.0.1:11399"}


def test_weights_scale_the_share() -> None:
    ring = HashRing({"a": 1, "b": 3})
    counts = Counter(ring.get_node(k) for k in KEYS[:40_000])
    assert 0.2 < counts["a"] / 40_000 < 0.3


def test_iter_nodes_gives_each_node_once_owner_first() -> None:
    ring = HashRing(NODES)
    for key in KEYS[:200]:
        order = list(ring.iter_nodes(key))
        assert order[0] == ring.get_node(key)
        assert sorted(order) == sorted(NODES)


def test_add_and_remove() -> None:
    ring = HashRing(NODES[:2])
    ring.add(NODES[2], 2)
    assert len(ring) == 3 and NODES[2] in ring
    ring.remove(NODES[0])
    assert NODES[0] not in ring.nodes
    with pytest.raises(ConfigurationError, match="not on the ring"):
        ring.remove("nope")


@pytest.mark.parametrize(
    ("nodes", "match"), [({"a": 0}, "bad weight 0"), ([""], "bad ring node ''"), ({"a": "x"}, "'x'")]
)
def test_bad_ring_arguments(nodes: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        HashRing(nodes)  # type: ignore[arg-type]


def test_empty_ring() -> None:
    with pytest.raises(ConfigurationError, match="no nodes"):
        HashRing().get_node(b"k")
    assert list(HashRing().iter_nodes(b"k")) == []
