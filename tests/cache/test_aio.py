"""What only the asyncio client does: many calls in flight over shared connections, and failover under load."""

import asyncio
import sys
from pathlib import Path

import pytest
import zmq

from zmqkit.asyncio import CacheClient
from zmqkit.cache import CacheNode
from zmqkit.errors import Closed, NodeUnavailable, ProtocolError
from zmqkit.testing import CacheCluster, free_tcp_endpoint

from .conftest import FakeClock

pytestmark = pytest.mark.timeout(30)


async def test_concurrent_gets_share_the_connections() -> None:
    cluster = CacheCluster(3)
    try:
        async with CacheClient(cluster.endpoints) as cache:
            items = {f"k{i}": i for i in range(300)}
            await cache.set_many(items)
            values = await asyncio.gather(*(cache.get(k) for k in items), cache.get("missing", -1))
            assert values == [*items.values(), -1]
            stats = await cache.stats()
            # 301 gets in flight at once travelled as a few get_many messages per node.
            messages = sum(s.get("cmd_get_many", 0) + s.get("cmd_get", 0) for s in stats.values())
            assert messages <= 3 * 3
            # Mixed commands in flight at once each get their own answer.
            results = await asyncio.gather(cache.incr("n"), cache.set("n", 5), cache.get_many(["k1", "k2"]))
            assert results[1] is True and results[2] == {"k1": 1, "k2": 2}
    finally:
        cluster.close()


async def test_failover_while_many_calls_are_in_flight(clock: FakeClock) -> None:
    cluster = CacheCluster(3)
    try:
        async with CacheClient(cluster.endpoints, timeout=0.3, retries=1, dead_timeout=30, clock=clock) as cache:
            keys = [f"k{i}" for i in range(60)]
            await cache.set_many(dict.fromkeys(keys, "v1"))
            gone = cluster.endpoints[2]
            cluster.nodes[2].stop()
            # Plain gets (the fast path) fail over: the stopped node's keys are misses on the next node.
            got = await asyncio.gather(*(cache.get(k, "miss") for k in keys))
            owners = [cache.ring.get_node(cache.key_bytes(k)) for k in keys]
            assert got == ["miss" if owner == gone else "v1" for owner in owners]
            assert "miss" in got and "v1" in got
            assert cache.node_state()[gone] == "dead"
            await asyncio.gather(*(cache.set(k, "v2") for k in keys))
            assert await asyncio.gather(*(cache.get(k) for k in keys)) == ["v2"] * len(keys)
    finally:
        cluster.close()


async def test_memoize_async_function_once_for_concurrent_callers() -> None:
    cluster = CacheCluster(2)
    try:
        async with CacheClient(cluster.endpoints) as cache:
            calls = []

            @cache.memoize(ttl=60)
            async def fetch(x: int) -> int:
                calls.append(x)
                await asyncio.sleep(0.2)
                return x + 1

            assert await asyncio.gather(*(fetch(1) for _ in range(8))) == [2] * 8
            assert calls == [1]
    finally:
        cluster.close()


async def test_closed_client_says_so() -> None:
    cluster = CacheCluster(1)
    try:
        cache = CacheClient(cluster.endpoints)
        await cache.set("k", 1)
        in_flight = cache.get("k")
        cache.close()
        with pytest.raises(Closed, match=r"CacheClient for .*tcp://.* is closed"):
            await in_flight
        with pytest.raises(Closed, match=r"CacheClient for .*tcp://.* is closed"):
            await cache.get("k")
        with pytest.raises(Closed):
            await cache.set("k", 2)
        cache.close()  # again: nothing happens
    finally:
        cluster.close()


async def test_get_is_a_future_and_gather_makes_no_task() -> None:
    cluster = CacheCluster(2)
    try:
        async with CacheClient(cluster.endpoints) as cache:
            await cache.set("k", 1)
            tasks = len(asyncio.all_tasks())
            futures = [cache.get("k") for _ in range(50)] + [cache.get("missing", "d")]
            assert all(asyncio.isfuture(f) for f in futures)
            assert len(asyncio.all_tasks()) == tasks  # resolved by the reader tasks, no Task per get
            assert await asyncio.gather(*futures) == [1] * 50 + ["d"]
            cancelled, kept = cache.get("k"), cache.get("k")
            cancelled.cancel()
            assert await kept == 1
    finally:
        cluster.close()


async def test_fast_get_errors_reach_their_own_awaiter() -> None:
    cluster = CacheCluster(1)
    try:
        async with (
            CacheClient(cluster.endpoints, codec="pickle") as trusting,
            CacheClient(cluster.endpoints, timeout=0.2, retries=0) as cache,
        ):
            await trusting.set("pickled", {1, 2})
            await cache.set("plain", "v")
            got = await asyncio.gather(cache.get("pickled"), cache.get("plain"), return_exceptions=True)
            assert isinstance(got[0], ProtocolError) and got[1] == "v"
            cluster.nodes[0].stop()
            with pytest.raises(NodeUnavailable):
                await cache.get("plain")
    finally:
        cluster.close()


async def test_a_call_made_before_its_node_listens_goes_out_once_it_does() -> None:
    endpoint = free_tcp_endpoint()
    async with CacheClient([endpoint], timeout=10) as cache:
        stored = asyncio.ensure_future(cache.set("k", "v"))
        while not cache._unsent:  # its send found no connection: it is tried again now and then
            await asyncio.sleep(0.01)
        with CacheNode(endpoint) as node:
            node.start()
            assert await asyncio.wait_for(stored, 5) is True
            assert await cache.get("k") == "v"


async def test_requests_to_a_node_that_connects_late_keep_their_order() -> None:
    endpoint = free_tcp_endpoint()
    async with CacheClient([endpoint], timeout=10) as cache:
        old = asyncio.ensure_future(cache.set("k", "old"))
        while not cache._unsent:  # no connection: it waits
            await asyncio.sleep(0.01)
        with CacheNode(endpoint) as node:
            node.start()
            assert cache._socks[0].poll(5000, zmq.POLLOUT)  # connected, before the loop could send what waits
            new = asyncio.ensure_future(cache.set("k", "new"))  # made after "old": it must not overtake it
            assert await asyncio.wait_for(asyncio.gather(old, new), 5) == [True, True]
            assert await cache.get("k") == "new"


async def test_a_write_whose_caller_gave_up_before_it_went_out_never_goes_out() -> None:
    endpoint = free_tcp_endpoint()
    async with CacheClient([endpoint], timeout=10) as cache:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.set("k", "old"), 0.05)  # no node yet: it waited, then was cancelled
        with CacheNode(endpoint) as node:
            node.start()
            assert cache._socks[0].poll(5000, zmq.POLLOUT)
            assert await asyncio.wait_for(cache.set("k", "new"), 5) is True
            assert await cache.get("k") == "new" and node.store.stats()["cmd_set"] == 1


async def test_every_call_can_be_handed_to_create_task() -> None:
    cluster = CacheCluster(2)
    try:
        async with CacheClient(cluster.endpoints) as cache:
            assert await asyncio.create_task(cache.set("k", 1)) is True
            got = asyncio.create_task(cache.get("k"))
            missing = asyncio.create_task(cache.get("nope", "d", timeout=None))
            assert (await got, await missing) == (1, "d")
            if sys.version_info >= (3, 11):
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(cache.get("k")) for _ in range(20)]
                    tasks.append(group.create_task(cache.get_many(["k", "nope"])))
                assert [t.result() for t in tasks] == [1] * 20 + [{"k": 1}]
            task = asyncio.create_task(cache.get("k"))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await cache.get("k") == 1  # a cancelled get left nothing behind
    finally:
        cluster.close()


def test_a_get_can_be_the_main_coroutine() -> None:
    cluster = CacheCluster(1)
    cache = CacheClient(cluster.endpoints)
    try:
        assert asyncio.run(cache.set("k", "v")) is True
        assert asyncio.run(cache.get("k")) == "v"  # each asyncio.run is a new loop: the client moves to it
    finally:
        cache.close()
        cluster.close()


async def test_aclose_lets_calls_in_flight_finish() -> None:
    cluster = CacheCluster(1)
    try:
        cache = CacheClient(cluster.endpoints)
        await cache.set("k", 1)
        gets = [cache.get("k") for _ in range(10)]
        stored = asyncio.ensure_future(cache.set("j", 2))
        await cache.aclose()
        assert await asyncio.gather(*gets, stored) == [1] * 10 + [True]
        with pytest.raises(Closed):
            await cache.get("k")
        await cache.aclose()  # again: nothing happens
    finally:
        cluster.close()


def test_mypy_flags_a_cache_call_not_awaited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (the dev extra)")
    monkeypatch.chdir(tmp_path)  # zmqkit as installed, not this checkout's folder
    app = tmp_path / "app.py"
    app.write_text(
        "from zmqkit.asyncio import CacheClient\n"
        "async def handler(cache: CacheClient) -> str:\n"
        "    cache.set('k', 'v')\n"  # line 3: the await is missing
        "    value = await cache.get('k')\n"
        "    return str(value)\n"
    )
    out, _err, status = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(app)])
    assert status == 1, out
    assert [line for line in out.splitlines() if "error:" in line and "app.py" in line] == [
        'app.py:3: error: Value of type "Coroutine[Any, Any, bool]" must be used  [unused-coroutine]'
    ], out
