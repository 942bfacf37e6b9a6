"""The store alone: memcached semantics, TTL on a fake clock, byte-bounded LRU, stats, leases."""

import gc
import tracemalloc

import pytest

from zmqkit import ConfigurationError
from zmqkit.cache.store import ITEM_OVERHEAD, NotANumber, Store, TooLarge, parse_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store("1M", "64K", clock=clock, wall=lambda: 1_700_000_000.0 + clock.now)


def test_set_get_and_miss(store: Store) -> None:
    store.set(b"k", b"\x01v")
    assert store.get(b"k") == b"\x01v"
    assert store.get(b"nope") is None
    stats = store.stats()
    assert (stats["get_hits"], stats["get_misses"], stats["items"]) == (1, 1, 1)


def test_ttl_expiry_on_the_injected_clock(store: Store, clock: FakeClock) -> None:
    store.set(b"short", b"\x00a", ttl=10)
    store.set(b"forever", b"\x00b", ttl=0)
    clock.now += 9.9
    assert store.get(b"short") == b"\x00a"
    clock.now += 0.2
    assert store.get(b"short") is None
    clock.now += 10**7
    assert store.get(b"forever") == b"\x00b"
    store.set(b"x", b"\x00x")  # a write sweeps what expired
    assert store.stats()["expired"] == 1


def test_ttl_above_30_days_is_absolute_unix_time(store: Store, clock: FakeClock) -> None:
    unix_now = 1_700_000_000 + clock.now
    store.set(b"abs", b"\x00v", ttl=int(unix_now) + 100)
    clock.now += 99
    assert store.get(b"abs") == b"\x00v"
    clock.now += 2
    assert store.get(b"abs") is None
    store.set(b"past", b"\x00v", ttl=int(unix_now) - 5)  # already in the past: not stored
    assert store.get(b"past") is None


def test_lru_eviction_order_in_bytes(clock: FakeClock) -> None:
    item = 1000
    store = Store(10 * (item + 1 + 2 + ITEM_OVERHEAD), 2000, clock=clock)
    for i in range(10):
        store.set(b"k%d" % i, b"\x00" + b"x" * item)
    assert len(store) == 10
    store.get(b"k0")  # k0 is now the most recently used; k1 is the oldest
    store.set(b"kn", b"\x00" + b"x" * item)
    assert store.get(b"k1") is None
    assert store.get(b"k0") is not None and store.get(b"k2") is not None
    assert store.stats()["evictions"] == 1
    assert store.stats()["bytes"] <= store.memory


def test_max_item_size(store: Store) -> None:
    with pytest.raises(TooLarge, match="max item size is 65536"):
        store.set(b"big", b"\x00" + b"x" * 65536)
    store.set(b"ok", b"\x00" + b"x" * 65535)
    with pytest.raises(TooLarge):
        store.append(b"ok", b"yy")


def test_add_replace_append_prepend(store: Store) -> None:
    assert not store.replace(b"k", b"\x01a")
    assert store.add(b"k", b"\x01a")
    assert not store.add(b"k", b"\x01b")
    assert store.replace(b"k", b"\x01c")
    assert store.append(b"k", b"d") and store.prepend(b"k", b"b")
    assert store.get(b"k") == b"\x01bcd"
    assert not store.append(b"missing", b"x")


def test_cas_tokens(store: Store) -> None:
    assert store.cas(b"k", b"\x00v", 0, 1) is None
    store.set(b"k", b"\x00v1")
    _, token = store.gets(b"k") or (b"", 0)
    assert store.cas(b"k", b"\x00v2", 0, token) is True
    assert store.cas(b"k", b"\x00v3", 0, token) is False  # changed since
    assert store.get(b"k") == b"\x00v2"


def test_incr_decr_edges(store: Store) -> None:
    assert store.incr(b"n", 1) is None
    store.set(b"n", b"\x0218446744073709551614")
    assert store.incr(b"n", 1) == 2**64 - 1
    assert store.incr(b"n", 2) == 1  # wraps like memcached
    assert store.decr(b"n", 5) == 0  # stops at 0
    assert store.get(b"n") == b"\x020"
    store.set(b"s", b"\x01abc")
    with pytest.raises(NotANumber):
        store.incr(b"s", 1)
    store.set(b"neg", b"\x02-5")
    with pytest.raises(NotANumber):
        store.decr(b"neg", 1)


def test_touch_delete_flush(store: Store, clock: FakeClock) -> None:
    store.set(b"k", b"\x00v", ttl=5)
    assert store.touch(b"k", 100)
    clock.now += 50
    assert store.get(b"k") == b"\x00v"
    assert store.delete(b"k") and not store.delete(b"k")
    store.set(b"a", b"\x00v")
    store.flush_all()
    assert store.get(b"a") is None and len(store) == 0


def test_leases(store: Store, clock: FakeClock) -> None:
    value, token, wait = store.lease_get(b"k", 5)
    assert value is None and token and not wait
    assert store.lease_get(b"k", 5) == (None, 0, True)  # someone else holds it
    assert store.lease_set(b"k", b"\x00v", 0, token)
    assert store.lease_get(b"k", 5) == (b"\x00v", 0, False)
    # A delete cancels a lease: the late filler must not store a value computed before it.
    store.delete(b"k")
    _, token2, _ = store.lease_get(b"k", 5)
    store.delete(b"k")
    assert not store.lease_set(b"k", b"\x00old", 0, token2)
    # An expired lease goes to the next caller.
    _, token3, _ = store.lease_get(b"j", 5)
    clock.now += 6
    _, token4, wait = store.lease_get(b"j", 5)
    assert token4 and token4 != token3 and not wait


def test_stats_counts_commands(store: Store) -> None:
    store.commands[b"get"] += 2
    stats = store.stats()
    assert stats["cmd_get"] == 2 and stats["limit_maxbytes"] == 2**20 and "uptime" in stats


@pytest.mark.parametrize(("text", "size"), [("64M", 64 * 2**20), ("1k", 1024), ("2G", 2 * 2**30), ("512", 512)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "M", "-1", "1.5M", "0", "lots"])
def test_bad_sizes_name_the_value(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=repr(bad).replace("'", ".")):
        parse_size(bad)


def test_max_item_must_fit_memory() -> None:
    with pytest.raises(ConfigurationError, match="does not fit"):
        Store("1M", "2M")


@pytest.mark.timeout(60)
def test_overhead_estimate_covers_real_memory() -> None:
    """The per-item overhead keeps the byte count at or above what Python really allocates."""
    store = Store("64M", "1M")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            store.set(b"key:%08d" % i, b"\x00" + b"v" * 100)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = store.stats()["bytes"]
    assert used <= counted * 1.05, (used, counted)
    assert counted <= used * 2, (used, counted)  # it also covers what malloc keeps, but not wildly more


def test_hot_read_keeps_lru_order_ttl_and_counts(clock: FakeClock) -> None:
    item = 1000
    store = Store(3 * (item + 1 + 2 + ITEM_OVERHEAD), 2000, clock=clock)
    for i in range(3):
        store.set(b"k%d" % i, b"\x00" + b"x" * item, ttl=10 if i == 2 else 0)
    assert store.hit(b"k0") == b"\x00" + b"x" * item  # k0 is now the most recently used; k1 the oldest
    assert store.hit(b"nope") is None
    store.set(b"k3", b"\x00" + b"x" * item)
    assert b"k1" not in store and b"k0" in store
    clock.now += 10
    assert store.hit(b"k2") is None and store.get(b"k2") is None  # expired exactly at its TTL
    assert store.get_many([b"k0", b"k1"]) == [b"\x00" + b"x" * item, b""]
    stats = store.stats()
    # hits: k0 by hit() and by get_many; misses: k2 by get, k1 by get_many (hit() counts only hits);
    # cmd_get: the hit() that hit (a node's get) and the get()
    assert (stats["get_hits"], stats["get_misses"], stats["cmd_get"], stats["expired"]) == (2, 2, 2, 1)


def test_leases_are_bounded_by_memory_and_expire_in_order(clock: FakeClock) -> None:
    from zmqkit.cache.store import LEASE_OVERHEAD

    store = Store("1M", "64K", clock=clock)
    for i in range(100_000):  # a flood of distinct keys, every lease live
        assert store.lease_get(b"flood:%d" % i, 60)[1] > 0
        assert store.lease_bytes <= store.lease_limit
    assert store.leases == store.lease_bytes // (LEASE_OVERHEAD + len(b"flood:99999")) < 1000
    # the oldest leases went first: the newest still hold, and their holders can fill their keys
    _, token, _ = store.lease_get(b"fresh", 60)
    assert store.lease_set(b"fresh", b"\x00v", 0, token)
    wait = store.lease_get(b"flood:99999", 60)[2]
    assert wait and not store.lease_set(b"flood:0", b"\x00v", 0, 1)
    clock.now += 61  # all expired: the next grant sweeps them from the front
    store.lease_get(b"after", 1)
    assert store.leases == 1 and store.lease_bytes == LEASE_OVERHEAD + len(b"after")


def test_leases_count_in_memory_and_evict_items(clock: FakeClock) -> None:
    store = Store("1M", "64K", clock=clock)
    for i in range(2000):
        store.set(b"item:%d" % i, b"\x00" + b"x" * 1000)
    assert store.stats()["evictions"] > 0  # full
    for i in range(5000):
        store.lease_get(b"lease:%d" % i, 60)
        stats = store.stats()
        assert stats["bytes"] <= store.memory
    # leases took their share (a quarter) from the items, no more
    assert store.lease_bytes > store.memory // 5 and len(store) > 0.7 * store.memory / 1600
    store.flush_all()
    assert store.stats()["bytes"] == 0 and store.leases == 0


def test_a_cancelled_lease_frees_its_bytes(clock: FakeClock) -> None:
    store = Store("1M", "64K", clock=clock)
    _, token, _ = store.lease_get(b"a", 60)
    store.lease_get(b"b", 60)
    store.delete(b"b")
    assert store.lease_set(b"a", b"\x00v", 0, token)
    assert store.leases == 0 and store.lease_bytes == 0
