"""Every command against real nodes, through the sync and the asyncio client, on one node and on three."""

from typing import Any

import pytest

from zmqkit import ConfigurationError, DataError, RemoteError

from .conftest import FakeClock, run

pytestmark = pytest.mark.timeout(30)

VALUES = [b"raw \x00 bytes", "text é", 42, -7, 2.5, {"a": [1, 2, None]}, [1, "x"], True, None]


@pytest.mark.parametrize("value", VALUES, ids=[type(v).__name__ for v in VALUES])
async def test_values_keep_their_type(cache: Any, value: Any) -> None:
    assert await run(cache.set("k", value)) is True
    got = await run(cache.get("k", "default"))
    assert got == value and type(got) is type(value)


async def test_pickle_only_when_asked(cache: Any) -> None:
    with pytest.raises(ConfigurationError, match="json codec cannot encode"):
        await run(cache.set("k", {1, 2}))


async def test_get_default_and_delete(cache: Any) -> None:
    assert await run(cache.get("nope")) is None
    assert await run(cache.get("nope", 5)) == 5
    await run(cache.set(b"k", "v"))
    assert await run(cache.delete("k")) is True
    assert await run(cache.delete("k")) is False


async def test_add_replace_append_prepend(cache: Any) -> None:
    assert await run(cache.replace("k", "a")) is False
    assert await run(cache.add("k", "b")) is True
    assert await run(cache.add("k", "c")) is False
    assert await run(cache.replace("k", "d")) is True
    assert await run(cache.append("k", "e")) is True
    assert await run(cache.prepend("k", b"<")) is True
    assert await run(cache.get("k")) == "<de"
    assert await run(cache.append("missing", "x")) is False


async def test_gets_and_cas_conflict(cache: Any) -> None:
    assert await run(cache.gets("k")) == (None, None)
    assert await run(cache.cas("k", 1, 123)) is None
    await run(cache.set("k", 1))
    value, token = await run(cache.gets("k"))
    assert value == 1
    assert await run(cache.cas("k", 2, token)) is True
    assert await run(cache.cas("k", 3, token)) is False  # someone changed it since our gets
    assert await run(cache.get("k")) == 2


async def test_incr_decr(cache: Any) -> None:
    assert await run(cache.incr("n")) is None
    await run(cache.set("n", 2**64 - 2))
    assert await run(cache.incr("n")) == 2**64 - 1
    assert await run(cache.incr("n", 3)) == 2
    assert await run(cache.decr("n", 10)) == 0
    assert await run(cache.get("n")) == 0
    await run(cache.set("s", "abc"))
    with pytest.raises(RemoteError, match="NOT_A_NUMBER"):
        await run(cache.incr("s"))
    with pytest.raises(ConfigurationError, match="bad delta -1"):
        await run(cache.incr("n", -1))


async def test_ttl_and_touch_on_the_nodes_clock(cache: Any, clock: FakeClock) -> None:
    await run(cache.set("short", "v", ttl=10))
    await run(cache.set("long", "v", ttl=0))
    await run(cache.set("touched", "v", ttl=10))
    assert await run(cache.touch("touched", 100)) is True
    clock.now += 11
    assert await run(cache.get_many(["short", "long", "touched"])) == {"long": "v", "touched": "v"}
    assert await run(cache.touch("short", 5)) is False


async def test_many_keys_in_parallel(cache: Any) -> None:
    items = {f"key:{i}": i for i in range(200)}
    assert await run(cache.set_many(items, ttl=60)) == []
    wanted = [*items, "missing:1", "missing:2"]
    got = await run(cache.get_many(wanted))
    assert got == items and list(got) == list(items)
    assert await run(cache.delete_many([*list(items)[:50], "missing:1"])) == 50
    assert len(await run(cache.get_many(wanted))) == 150
    assert await run(cache.get_many([])) == {}


async def test_item_size_limits(cache: Any) -> None:
    # Data refused at run time, not a configuration mistake: a DataError.
    with pytest.raises(DataError, match="max item size is 65536"):
        await run(cache.set("big", b"x" * 70_000))  # the node's limit (64K), reported from the node
    await run(cache.set("fits", b"x" * 60_000))
    with pytest.raises(DataError, match="max item size"):
        await run(cache.set_many({"a": 1, "big": b"x" * 70_000}))


@pytest.mark.parametrize("key", ["", "k" * 251, None, 1.5])
async def test_bad_keys(cache: Any, key: Any) -> None:
    with pytest.raises(ConfigurationError, match="bad key"):
        await run(cache.set(key, 1))


@pytest.mark.parametrize("ttl", [-1, 40 * 24 * 3600, 2**32, "10"])
async def test_bad_ttl(cache: Any, ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"bad ttl {ttl!r}"):
        await run(cache.set("k", 1, ttl=ttl))


async def test_stats_version_ping_flush(cache: Any) -> None:
    await run(cache.set_many({f"k{i}": i for i in range(30)}))
    await run(cache.get("k1"))
    await run(cache.get("k1"))  # the sync client's second get of a key takes its shortest way, the node's too
    await run(cache.get("zz"))
    stats = await run(cache.stats())
    assert set(stats) == set(cache.endpoints)
    assert sum(s["items"] for s in stats.values()) == 30
    assert sum(s["get_hits"] for s in stats.values()) == 2
    assert sum(s["get_misses"] for s in stats.values()) == 1
    assert sum(s.get("cmd_get", 0) for s in stats.values()) == 3
    assert all(s["limit_maxbytes"] == 64 * 2**20 for s in stats.values())
    assert set((await run(cache.version())).values()) == {__import__("zmqkit").__version__}
    assert len(await run(cache.ping())) == len(cache.endpoints)
    assert await run(cache.flush_all()) == len(cache.endpoints)
    assert await run(cache.get_many([f"k{i}" for i in range(30)])) == {}


async def test_memoize_computes_once(cache: Any) -> None:
    calls = []

    @cache.memoize(ttl=60)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert await run(square(3)) == 9
    assert await run(square(3)) == 9
    assert await run(square(4)) == 16
    assert calls == [3, 4]


async def test_memoize_failure_frees_the_lease(cache: Any) -> None:
    attempts = []

    @cache.memoize(ttl=60)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first call fails")
        return "ok"

    with pytest.raises(RuntimeError):
        await run(flaky())
    assert await run(flaky()) == "ok"  # no waiting out the first caller's lease
