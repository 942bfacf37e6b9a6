"""The client beyond single commands: mapping, threads, failover, rejoin without stale reads, replicas."""

import enum
import threading
from typing import Any

import cachetools
import pytest

from zmqkit import Closed, ConfigurationError, NodeUnavailable
from zmqkit.cache import CacheClient, CacheNode
from zmqkit.cache.actions import Batch, Reply, Sleep
from zmqkit.cache.core import ClientCore
from zmqkit.cache.protocol import decode_reply
from zmqkit.cache.service import Service
from zmqkit.cache.store import Store
from zmqkit.testing import CacheCluster, wait_until

from .conftest import FakeClock

pytestmark = pytest.mark.timeout(30)


def test_mutable_mapping(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()
    cache["a"] = {"x": 1}
    assert cache["a"] == {"x": 1} and "a" in cache and "b" not in cache
    with pytest.raises(KeyError):
        cache["b"]
    del cache["a"]
    with pytest.raises(KeyError):
        del cache["a"]
    cache.update({"c": 1, "d": 2})
    assert len(cache) == 2 and cache.pop("c") == 1 and cache.setdefault("e", 5) == 5
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(TypeError, match="cannot list its keys"):
        list(cache)


def test_cachetools_cached_uses_the_cluster(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()
    calls = []

    @cachetools.cached(cache=cache)
    def slow(x: int, y: str = "") -> str:
        calls.append(x)
        return f"{x}{y}"

    assert slow(1, "a") == "1a" and slow(1, "a") == "1a" and slow(2) == "2"
    assert calls == [1, 2]
    other = cache_cluster.client()  # another "process" sees the same values
    assert other[cachetools.keys.hashkey(1, "a")] == "1a"


def test_bad_client_arguments() -> None:
    with pytest.raises(ConfigurationError, match="'nope'"):
        CacheClient(["nope"])
    with pytest.raises(ConfigurationError, match="bad replicas 3"):
        CacheClient(["tcp://127.0.0.1:5555"], replicas=3)
    with pytest.raises(ConfigurationError, match="bad timeout=0"):
        CacheClient(["tcp://127.0.0.1:5555"], timeout=0)
    with pytest.raises(ConfigurationError, match="unknown codec 'yaml'"):
        CacheClient(["tcp://127.0.0.1:5555"], codec="yaml")


def test_pickle_when_asked(cache_cluster: CacheCluster) -> None:
    trusting = cache_cluster.client(codec="auto+pickle")
    trusting["s"] = {1, 2}
    assert trusting["s"] == {1, 2}
    plain = cache_cluster.client()
    with pytest.raises(Exception, match="pickled payload; refused"):
        plain["s"]


def test_threads_share_one_client(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()
    cache["counter"] = 0
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                cache[f"t{t}:{i}"] = i
                assert cache[f"t{t}:{i}"] == i
                cache.incr("counter")
            assert len(cache.get_many([f"t{t}:{i}" for i in range(100)])) == 100
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert not errors and cache["counter"] == 600


def test_memoize_stampede_across_threads(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()
    computing = threading.Event()
    release = threading.Event()
    calls = []

    @cache.memoize(ttl=60, lease=20)
    def expensive(x: int) -> int:
        calls.append(x)
        computing.set()
        release.wait(10)
        return x * 10

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(expensive(7)))
    first.start()
    assert computing.wait(10)
    others = [threading.Thread(target=lambda: results.append(expensive(7))) for _ in range(5)]
    for th in others:
        th.start()
    release.set()
    for th in [first, *others]:
        th.join(20)
    assert results == [70] * 6 and calls == [7]


def test_failover_and_rejoin_after_dead_timeout(clock: FakeClock) -> None:
    cluster = CacheCluster(3)
    cache = cluster.client(timeout=0.2, retries=1, dead_timeout=30, clock=clock)
    try:
        keys = [f"k{i}" for i in range(60)]
        cache.set_many(dict.fromkeys(keys, "v"))
        victim = cluster.nodes[1]
        endpoint = str(victim.endpoint)
        victim.stop()
        # Keys that lived on the stopped node miss (their copy is gone) but every call works.
        for key in keys:
            cache[key] = "v2"
        assert cache.node_state()[endpoint] == "dead"
        assert cache.get_many(keys) == dict.fromkeys(keys, "v2")
        # The node comes back on the same endpoint; after dead_timeout the client uses it again.
        cluster.nodes[1] = CacheNode(endpoint)
        cluster.nodes[1].start()
        # the client's socket reconnects (its backoff)
        wait_until(lambda: endpoint in cache.ping(timeout=0.2), 20, f"{endpoint} answers again")
        clock.now += 31
        assert cache.node_state()[endpoint] == "rejoining"
        for key in keys:
            cache[key] = "v3"
        assert cache.node_state()[endpoint] == "alive"
        assert cluster.nodes[1].store.stats()["items"] > 0
        assert cache.get_many(keys) == dict.fromkeys(keys, "v3")
    finally:
        cluster.close()


def test_a_remembered_get_fails_over_and_rejoins(clock: FakeClock) -> None:
    # The sync get remembers each key's request and node; that must not outlive the node.
    cluster = CacheCluster(2)
    cache = cluster.client(timeout=0.2, retries=1, dead_timeout=30, clock=clock)
    try:
        cache["k"] = b"v1"
        assert cache.get("k") == b"v1" and cache.get("k") == b"v1"
        endpoint = cache.ring.get_node(b"k")
        owner = cache.endpoints.index(endpoint)
        cluster.nodes[owner].stop()
        assert cache.get("k", "gone") == "gone"  # no answer, a retry, then the other node: it never had k
        assert cache.node_state()[endpoint] == "dead"
        cache["k"] = b"v2"  # to the other node; the dead owner is hinted to forget k
        assert cache.get("k") == b"v2" and cache.get("k") == b"v2"
        cluster.nodes[owner] = CacheNode(endpoint)
        cluster.nodes[owner].store.set(b"k", b"\x00stale")  # as if it had kept an old copy
        cluster.nodes[owner].start()
        # the client's socket reconnects (its backoff)
        wait_until(lambda: endpoint in cache.ping(timeout=0.2), 20, f"{endpoint} answers again")
        clock.now += 31
        assert cache.get("k") is None  # the owner again, after it deleted the hinted key: never b"stale"
        assert cache.node_state()[endpoint] == "alive"
        cache["k"] = b"v3"
        assert cache.get("k") == b"v3" and cache.get("k") == b"v3"
    finally:
        cluster.close()


def test_remembered_gets_tell_keys_apart(cache_cluster: CacheCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    class Color(str, enum.Enum):  # equal to "red": refused, as it would be one key with "red" or another
        RED = "red"

    monkeypatch.setattr("zmqkit.cache.core._REQ_GETS_MAX", 8)
    cache = cache_cluster.client()
    cache.set_many({"red": "plain", b"raw": "bytes key", "n": 7, 7: "int key", "7": "str key"})
    with pytest.raises(ConfigurationError, match="not Color"):
        cache.set(Color.RED, "enum")
    for _ in range(2):
        assert cache.get("red") == "plain" and cache.get(7) == "int key" and cache.get("7") == "str key"
        assert cache.get(b"raw") == "bytes key" and cache.get("n") == 7 and cache.get("none", 0) == 0
        # 7.0 == 7 and True == 1 (as dict keys too), but neither is the int key: both are refused
        with pytest.raises(ConfigurationError, match="not float"):
            cache.get(7.0)
        cache[1] = "one"
        with pytest.raises(ConfigurationError, match="not bool"):
            cache.get(True)
    cache.set_many({f"k{i}": i for i in range(20)})
    for _ in range(2):  # more keys than the memo holds (8 here): it starts over, and every get stays right
        assert [cache.get(f"k{i}") for i in range(20)] == list(range(20))
    with pytest.raises(ConfigurationError, match="bad key"):
        cache.get("")


def test_all_nodes_down_raises_node_unavailable() -> None:
    cluster = CacheCluster(1)
    cluster.close()
    with CacheClient(cluster.endpoints, timeout=0.1, retries=0) as cache, pytest.raises(NodeUnavailable):
        cache.get("k")


def test_replicas_serve_reads_when_a_node_is_gone(clock: FakeClock) -> None:
    cluster = CacheCluster(3)
    cache = cluster.client(replicas=2, timeout=0.2, retries=0, clock=clock)
    try:
        items = {f"k{i}": i for i in range(40)}
        cache.set_many(items)
        assert sum(s["items"] for s in cache.stats().values()) == 80  # two copies of each
        cluster.nodes[0].stop()
        assert cache.get_many(items) == items
        assert all(cache[k] == v for k, v in items.items())
    finally:
        cluster.close()


class SimulatedCluster:
    """Nodes as in-memory Services driven through the client core; a paused node keeps what it is sent and
    runs it, in order, when resumed: what SIGSTOP/SIGCONT does to a real node."""

    def __init__(self, size: int) -> None:
        self.services = [Service(Store()) for _ in range(size)]
        self.paused: set[int] = set()
        self.queued: dict[int, list[bytes]] = {i: [] for i in range(size)}

    def answer(self, batch: Batch) -> dict[bytes, Reply]:
        replies = {}
        for call in batch.calls:
            if call.node in self.paused:
                self.queued[call.node].append(call.frame)
                continue
            rid, status, body = decode_reply(self.services[call.node].handle(call.frame))
            replies[rid] = (status, body)
        return replies

    def resume(self, node: int) -> None:
        self.paused.discard(node)
        for frame in self.queued[node]:
            self.services[node].handle(frame)  # the replies go to requests that already timed out
        self.queued[node] = []

    def drive(self, op: Any) -> Any:
        value = None
        while True:
            try:
                action = op.send(value)
            except StopIteration as stop:
                return stop.value
            value = self.answer(action) if isinstance(action, Batch) else None
            assert not isinstance(action, Sleep)


def test_no_stale_read_from_a_node_that_was_paused(clock: FakeClock) -> None:
    sim = SimulatedCluster(3)
    endpoints = [f"tcp://127.0.0.1:{20000 + i}" for i in range(3)]

    class SimClient(ClientCore):
        def _run(self, op: Any) -> Any:
            return sim.drive(op)

    cache = SimClient(endpoints, retries=1, dead_timeout=10, clock=clock)
    key = "user:1"
    owner = endpoints.index(cache.ring.get_node(key.encode()))
    cache.set(key, "v1")
    sim.paused.add(owner)
    cache.set(key, "v2")  # times out twice on the owner (left queued there), then lands on the next node
    assert cache.node_state()[endpoints[owner]] == "dead"
    cache.set(key, "v3")  # the owner is skipped while dead
    cache.set("other", "x")
    assert cache.get(key) == "v3"
    sim.resume(owner)  # the owner now runs the queued "v2" sets: it holds a stale value
    assert sim.services[owner].store.get(key.encode()) == b"\x01v2"
    clock.now += 11
    assert cache.get(key) in (None, "v3")  # never v1 or v2 from the returning owner
    assert cache.node_state()[endpoints[owner]] == "alive"
    assert sim.services[owner].store.get(key.encode()) is None
    cache.set(key, "v4")
    assert sim.services[owner].store.get(key.encode()) == b"\x01v4"


def test_a_node_that_missed_flush_all_is_flushed_before_it_serves(clock: FakeClock) -> None:
    sim = SimulatedCluster(2)

    class SimClient(ClientCore):
        def _run(self, op: Any) -> Any:
            return sim.drive(op)

    cache = SimClient(["tcp://127.0.0.1:20000", "tcp://127.0.0.1:20001"], clock=clock)
    cache.set_many({f"k{i}": i for i in range(20)})
    sim.paused.add(1)
    assert cache.flush_all() == 1
    sim.queued[1] = []  # the connection dropped: the flush never reached the node
    sim.resume(1)
    assert cache.get_many([f"k{i}" for i in range(20)]) == {}
    assert len(sim.services[1].store) == 0


def test_a_node_evicts_least_recently_used_first() -> None:
    cluster = CacheCluster(1, memory="1M", max_item="64K")
    try:
        cache = cluster.client()
        value = b"x" * 10_000
        keys = [f"k{i:03d}" for i in range(150)]
        cache[keys[0]] = value
        for key in keys[1:]:
            cache[key] = value
            cache.get(keys[0])  # k000 is used after every write: always the most recent
        stats = cache.stats()[cluster.endpoints[0]]
        assert stats["evictions"] > 0 and stats["bytes"] <= 2**20
        present = cache.get_many(keys)
        assert keys[0] in present and keys[1] not in present
        survivors = [k for k in keys[1:] if k in present]
        assert survivors == keys[len(keys) - len(survivors) :]  # the least recently used went first
    finally:
        cluster.close()


def test_curve_encrypted_cluster() -> None:
    from zmqkit import AuthenticationFailed, Curve, KeyPair

    server_keys = KeyPair.generate()
    node = CacheNode(curve=Curve.server(server_keys, allow="*"))
    try:
        endpoint = node.start()
        with CacheClient([endpoint], curve=Curve.client(server_keys), timeout=5) as cache:
            cache["secret"] = "value"
            assert cache["secret"] == "value"
        with CacheClient([endpoint], timeout=5, retries=0) as plain, pytest.raises(AuthenticationFailed):
            plain.get("secret")  # no CURVE handshake: refused, and said so (issue 12), not "unavailable"
    finally:
        node.stop()


@pytest.mark.timeout(10)
def test_node_serve_in_this_thread_until_timeout() -> None:
    node = CacheNode()
    endpoints: list[str] = []
    node.serve(ready=endpoints.append, timeout=0.2)
    assert endpoints and endpoints[0].startswith("tcp://127.0.0.1:")
    node.stop()  # after serve() returned: nothing to do


@pytest.mark.timeout(30)
def test_a_forked_child_gets_its_own_sockets(cache_cluster: CacheCluster) -> None:
    import os
    import signal

    cache = cache_cluster.client()
    cache["from"] = "parent"
    pid = os.fork()
    if pid == 0:  # the child uses the client it inherited
        signal.alarm(10)  # a stuck child must not outlive the test
        code = 0
        try:
            cache["child"] = "wrote"
            code = 0 if cache["from"] == "parent" else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache["child"] == "wrote"


def test_closed_client_says_so(cache_cluster: CacheCluster) -> None:
    cache = cache_cluster.client()
    cache["k"] = 1
    cache.close()
    with pytest.raises(Closed, match=r"CacheClient for .*tcp://.* is closed"):
        cache.get("k")
    cache.close()  # again: nothing happens
    with pytest.raises(Closed):
        cache.set("k", 2)


def test_help_shows_every_parameter() -> None:
    import inspect

    params = inspect.signature(CacheClient).parameters
    assert {"endpoints", "timeout", "retries", "dead_timeout", "replicas", "codec", "max_item", "curve"} <= set(params)
    get = inspect.signature(CacheClient.get).parameters
    assert list(get) == ["self", "key", "default", "timeout"] and repr(get["timeout"].default) == "DEFAULT"


def test_timeout_none_waits_without_limit() -> None:
    from zmqkit.endpoints import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    cache = CacheClient([endpoint], timeout=0.05, retries=0)
    got: list[object] = []
    getter = threading.Thread(target=lambda: got.append(cache.get("k", "miss", timeout=None)))
    try:
        getter.start()
        getter.join(0.3)  # far beyond the client's own timeout: it still waits
        assert getter.is_alive() and not got
        with CacheNode(endpoint) as node:
            node.start()
            getter.join(10)
            assert got == ["miss"]
    finally:
        cache.close()
