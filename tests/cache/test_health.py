"""Node health on an injected clock: retries, dead timers, hints and their overflow, missed flushes."""

from zmqkit.cache.health import Health

from .conftest import FakeClock


def make(clock: FakeClock, **options: int) -> Health:
    settings = {"retries": 1, "dead_timeout": 10, "max_hints": 3, **options}
    return Health(["tcp://a:1", "tcp://b:1"], clock=clock, **settings)  # type: ignore[arg-type]


def test_retry_then_dead_then_rejoining(clock: FakeClock) -> None:
    health = make(clock)
    node = health.nodes[0]
    assert health.failed(node, [b"k"]) is False  # retried first: no hint for a write that may still arrive
    assert node.hints == set()
    assert health.failed(node, [b"k"]) is True
    assert node.hints == {b"k"} and not health.healthy
    assert health.state() == {"tcp://a:1": "dead", "tcp://b:1": "alive"}
    clock.now += 10
    assert health.state()["tcp://a:1"] == "rejoining"
    assert health.rejoin_request(node) == (b"delete_many", [b"k"])
    health.rejoined(node, (b"delete_many", [b"k"]))
    assert health.state()["tcp://a:1"] == "alive" and health.healthy


def test_a_hint_added_during_rejoin_keeps_the_node_out(clock: FakeClock) -> None:
    health = make(clock, retries=0)
    node = health.nodes[0]
    health.failed(node, [b"a"])
    clock.now += 11
    sent = health.rejoin_request(node)
    health.hint(node, b"b")  # another thread wrote b elsewhere meanwhile
    health.rejoined(node, sent)
    assert node.hints == {b"b"} and health.state()["tcp://a:1"] == "rejoining"


def test_too_many_hints_become_a_flush(clock: FakeClock) -> None:
    health = make(clock, retries=0)
    node = health.nodes[1]
    health.failed(node, [b"1", b"2", b"3", b"4"])
    assert node.flush and not node.hints
    clock.now += 11
    assert health.rejoin_request(node) == (b"flush_all", [])
    health.rejoined(node, (b"flush_all", []))
    assert not node.flush and health.healthy


def test_missed_flush_forces_a_flush_before_serving(clock: FakeClock) -> None:
    health = make(clock)
    node = health.nodes[0]
    health.missed_flush(node)
    assert health.state()["tcp://a:1"] == "rejoining"  # usable at once, through a rejoin
    assert health.rejoin_request(node) == (b"flush_all", [])


def test_copies_written_in_a_dead_nodes_place_are_handed_back_when_it_is_alive(clock: FakeClock) -> None:
    health = make(clock, retries=0)
    a, b = health.nodes
    health.failed(a, [b"k"])
    health.stood_in(a, b.index, [b"k"])  # k went to B instead
    clock.now += 10
    sent = health.rejoin_request(a)
    assert health.rejoined(a, sent) == {b.index: {b"k"}} and a.stand_ins == {}
    health.stale(b, [b"k"])  # what the client does with them (core.py): B deletes k before it serves again
    assert health.state()["tcp://b:1"] == "rejoining" and not health.healthy
    assert health.rejoin_request(b) == (b"delete_many", [b"k"])
    assert health.rejoined(b, (b"delete_many", [b"k"])) == {} and health.healthy


def test_too_many_copies_to_list_become_unknown_and_a_late_one_is_stale_at_once(clock: FakeClock) -> None:
    health = make(clock, retries=0)  # max_hints=3
    a, b = health.nodes
    health.failed(a, [b"k"])
    health.stood_in(a, b.index, [b"1", b"2", b"3"])
    assert a.stand_ins == {b.index: {b"1", b"2", b"3"}}
    health.stood_in(a, b.index, [b"4"])
    assert a.stand_ins is None  # every other node is flushed when A is back
    clock.now += 10
    assert health.rejoined(a, health.rejoin_request(a)) is None
    health.stood_in(a, b.index, [b"5"])  # A came back while this write was in flight: B deletes it now
    assert b.hints == {b"5"} and health.state()["tcp://b:1"] == "rejoining"


def test_a_node_new_after_the_first_write_is_late_for_good(clock: FakeClock) -> None:
    health = make(clock, max_hints=6)  # a batch is handed back at half of max_hints
    added, released = health.follow(["tcp://a:1", "tcp://b:1", "tcp://c:1"], suspect_new=True)
    (c,) = added
    assert c.late and health.late and released == []
    health.rejoined(c, health.rejoin_request(c))  # flushed: alive
    assert health.wrote_late(c, {b"1": (), b"2": (0,)}) == {}  # listed, with the nodes that took the write too
    assert health.wrote_late(c, {b"3": ()}) == {b"1": (), b"2": (0,), b"3": ()}  # half full: a batch
    assert health.wrote_late(c, {b"4": (1,)}) == {}
    _, released = health.follow(["tcp://a:1", "tcp://c:1"], suspect_new=True)  # B (which took 4 too) left
    assert released == [(c, {b"4": (1,)})] and c.late_keys == {}
    _, released = health.follow(["tcp://a:1"], suspect_new=True)  # C leaves: nothing written since
    assert released == []
    assert health.wrote_late(c, {b"5": ()}) == {b"5": ()}  # written as it left: handed back at once
    health.follow(["tcp://a:1", "tcp://c:1"], suspect_new=True)
    assert c.late and health.late  # back: still late (the nodes it took keys from may keep older copies)
    health.rejoined(c, health.rejoin_request(c))
    health.wrote_late(c, {b"6": ()})
    assert health.take_all_late() == [(c, {b"6": ()})]  # a node given up on as dead: the client hands them back


def test_a_node_new_before_the_first_write_is_not_late_and_max_hints_0_lists_nothing(clock: FakeClock) -> None:
    health = make(clock)
    (c,) = health.follow(["tcp://a:1", "tcp://b:1", "tcp://c:1"], suspect_new=False)[0]
    assert not c.late and not health.late
    unlisted = make(clock, max_hints=0)
    (d,) = unlisted.follow(["tcp://a:1", "tcp://b:1", "tcp://d:1"], suspect_new=True)[0]
    unlisted.rejoined(d, unlisted.rejoin_request(d))
    assert unlisted.take_all_late() == []  # not written to: nothing to hand back
    assert unlisted.wrote_late(d, {b"1": ()}) == {} and d.late_keys == {}
    assert unlisted.follow(["tcp://a:1", "tcp://d:1"], suspect_new=True)[1] == [(d, None)]  # flush the others
