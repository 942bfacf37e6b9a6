"""Request-reply's public face: signatures, what a timeout means, use after close, aclose, wait_ready, threads."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import zmqkit.asyncio as zasync
from zmqkit import Closed, ConfigurationError, RequestTimeout, Unavailable
from zmqkit.patterns import Client, Proxy, RpcClient, RpcServer, Server
from zmqkit.testing import free_tcp_endpoint, wait_until

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers on free ports; every one is closed at the end."""
    made: list[Server] = []

    def start(handler: Callable[[Any], Any] = lambda body: body, **kw: Any) -> Server:
        server = Server(LOCAL, handler, **kw).start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.close()


@pytest.mark.parametrize(
    "cls",
    [Client, zasync.Client, Server, zasync.Server, RpcClient, zasync.RpcClient, RpcServer, zasync.RpcServer],
)
def test_every_constructor_spells_out_its_parameters(cls: type) -> None:
    params = inspect.signature(cls).parameters.values()
    assert not [p for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = {p.name for p in params}
    assert {"endpoints", "codec", "curve", "options", "clock"} <= names
    assert ({"timeout", "retries", "max_in_flight"} <= names) or ({"concurrency", "max_queue"} <= names)


@pytest.mark.timeout(20)
def test_timeout_none_on_a_call_means_no_limit_and_default_the_clients(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    server = servers(lambda body: body if body == b"quick" else release.wait(10) and body, concurrency=2)
    with Client(server.endpoints, timeout=0.2, retries=0) as client:
        assert client.request(b"quick") == b"quick"
        with pytest.raises(RequestTimeout):
            client.request(b"slow")  # DEFAULT: the client's 0.2 s
        timer = threading.Timer(0.5, release.set)  # longer than the client's timeout
        timer.start()
        try:
            assert client.request(b"slow again", timeout=None) == b"slow again"
        finally:
            timer.cancel()
            release.set()


@pytest.mark.timeout(20)
def test_a_client_made_with_no_limit_waits_past_the_old_default(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    server = servers(lambda body: release.wait(10) and body, concurrency=2)
    with Client(server.endpoints, timeout=None) as client:
        assert client.timeout is None
        timer = threading.Timer(0.3, release.set)
        timer.start()
        assert client.request(b"x") == b"x"
        timer.join()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1s"])
def test_a_bad_call_timeout_is_refused_with_the_value(servers: Callable[..., Server], bad: object) -> None:
    server = servers()
    with Client(server.endpoints) as client, pytest.raises(ConfigurationError, match=repr(bad)):
        client.request(b"x", timeout=bad)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
def test_use_after_close_raises_closed_naming_the_class_and_endpoint(servers: Callable[..., Server]) -> None:
    server = servers()
    endpoint = server.endpoints[0]
    client = Client(endpoint)
    assert client.request(b"x") == b"x"
    client.close()
    client.close()  # idempotent
    with pytest.raises(Closed, match=rf"Client for {endpoint} is closed"):
        client.request(b"x")
    with pytest.raises(Closed, match="Client"):
        client.wait_ready(1)
    rpc = RpcClient(endpoint)
    rpc.close()
    with pytest.raises(Closed, match=rf"Client for {endpoint}"):
        rpc.call("anything")
    server.close()
    with pytest.raises(Closed, match=rf"Server on {endpoint} is closed"):
        server.start()
    proxy = Proxy(LOCAL, LOCAL).start()
    proxy.close()
    with pytest.raises(Closed, match="Proxy"):
        proxy.start()


@pytest.mark.timeout(20)
async def test_async_use_after_close_raises_closed() -> None:
    server = await zasync.Server(LOCAL, lambda body: body).start()
    endpoint = server.endpoints[0]
    async with zasync.Client(endpoint) as client:
        assert await client.request(b"x") == b"x"
    with pytest.raises(Closed, match=rf"AsyncClient for {endpoint} is closed"):
        await client.request(b"x")
    server.close()
    with pytest.raises(Closed, match=rf"AsyncServer on {endpoint} is closed"):
        await server.start()


@pytest.mark.timeout(20)
async def test_aclose_lets_calls_in_flight_finish_and_close_does_not(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    server = servers(lambda body: release.wait(10) and body, concurrency=4)
    drained = zasync.Client(server.endpoints, timeout=10)
    call = asyncio.ensure_future(drained.request(b"in flight"))
    await asyncio.to_thread(wait_until, lambda: server.stats()["held"] == 1, 10, "the server to hold the call")
    threading.Timer(0.1, release.set).start()
    await drained.aclose(timeout=10)
    assert call.result() == b"in flight"
    release.clear()
    cut = zasync.Client(server.endpoints, timeout=10)
    call = asyncio.ensure_future(cut.request(b"cut"))
    await asyncio.to_thread(wait_until, lambda: server.stats()["held"] == 1, 10, "the server to hold the call")
    await cut.aclose(drain=False)
    with pytest.raises(Unavailable, match="closed"):
        await call
    release.set()


@pytest.mark.timeout(20)
async def test_async_server_aclose_drains_what_it_holds() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(body: bytes) -> bytes:
        entered.set()
        await release.wait()
        return body

    server = await zasync.Server(LOCAL, handler, concurrency=4).start()
    async with zasync.Client(server.endpoints, timeout=10) as client:
        call = asyncio.ensure_future(client.request(b"held"))
        await asyncio.wait_for(entered.wait(), 10)
        closing = asyncio.ensure_future(server.aclose(timeout=10))
        await asyncio.sleep(0)  # let aclose say goodbye before the handler is released
        release.set()
        await asyncio.wait_for(closing, 10)
        assert await call == b"held"
    assert server.stats() == {"executed": 1, "duplicates": 0, "held": 0, "auth_failures": 0}


@pytest.mark.timeout(20)
def test_wait_ready_says_which_servers_answered(servers: Callable[..., Server]) -> None:
    server = servers()
    absent = free_tcp_endpoint()
    with Client([server.endpoints[0], absent]) as client:
        assert client.wait_ready(5) == [server.endpoints[0]]
    with Client(absent) as client:
        assert client.wait_ready(0.1) == []


@pytest.mark.timeout(20)
async def test_async_wait_ready_says_which_servers_answered(servers: Callable[..., Server]) -> None:
    server = servers()
    async with zasync.Client([server.endpoints[0], free_tcp_endpoint()]) as client:
        assert await client.wait_ready(5) == [server.endpoints[0]]
    async with zasync.RpcClient(free_tcp_endpoint()) as rpc:
        assert await rpc.wait_ready(0.1) == []


@pytest.mark.timeout(20)
def test_concurrency_runs_handlers_in_parallel(servers: Callable[..., Server]) -> None:
    # Four calls meet at a barrier inside the handler: only four handler threads at once let them all through.
    barrier = threading.Barrier(4, timeout=10)
    server = servers(lambda body: barrier.wait() is not None and body, concurrency=4)

    def call(i: int) -> bytes:
        with Client(server.endpoints, timeout=10) as own:
            return own.request(b"%d" % i)  # type: ignore[no-any-return]

    replies: dict[int, bytes] = {}
    threads = [threading.Thread(target=lambda i=i: replies.__setitem__(i, call(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert replies == {i: b"%d" % i for i in range(4)}  # a server running one handler at a time answers none
    assert not barrier.broken
