"""RPC over request-reply: methods and objects, attribute calls, listing, remote errors, codecs, asyncio."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

import zmqkit.asyncio as zasync
from zmqkit import ConfigurationError, ProtocolError, RemoteError
from zmqkit.patterns import RpcClient, RpcServer, Server


class Images:
    """Some methods exposed through register()."""

    def resize(self, img: str, size: int) -> str:
        """Resize an image (pretend)."""
        return f"{img}@{size}"

    def fail(self) -> None:
        raise KeyError("no such image")

    def _private(self) -> None:
        raise AssertionError("never exposed")


@pytest.fixture
def server() -> Iterator[RpcServer]:
    srv = RpcServer("tcp://127.0.0.1:0", concurrency=2)

    @srv.method
    def add(a: int, b: int = 0) -> int:
        """Add two numbers."""
        return a + b

    @srv.method("echo.bytes")
    def echo_bytes(data: bytes) -> bytes:
        return data

    srv.register(Images(), prefix="img.")
    srv.start()
    yield srv
    srv.close()


@pytest.mark.timeout(20)
def test_calls_by_attribute_and_by_name(server: RpcServer) -> None:
    with RpcClient(server.endpoints) as client:
        assert client.api.add(2, 3) == 5
        assert client.api.add(2, b=40) == 42
        assert client.call("img.resize", "cat.png", 128) == "cat.png@128"
        assert getattr(client.api, "img.resize")("a", 1) == "a@1"


@pytest.mark.timeout(20)
def test_methods_lists_what_the_server_offers(server: RpcServer) -> None:
    with RpcClient(server.endpoints) as client:
        offered = client.methods()
    assert sorted(offered) == ["add", "echo.bytes", "img.fail", "img.resize"]
    assert offered["add"]["doc"] == "Add two numbers."
    assert offered["add"]["signature"].startswith("(a") and "b" in offered["add"]["signature"]


@pytest.mark.timeout(20)
def test_remote_exceptions_and_unknown_methods(server: RpcServer) -> None:
    with RpcClient(server.endpoints) as client:
        with pytest.raises(RemoteError) as info:
            client.call("img.fail")
        assert info.value.remote_type == "KeyError" and "no such image" in info.value.message
        assert "Images.fail" in info.value.remote_traceback or "in fail" in info.value.remote_traceback
        with pytest.raises(RemoteError) as info:
            client.api.nope(1)
        assert info.value.remote_type == "MethodNotFound" and "'nope'" in info.value.message
        with pytest.raises(RemoteError, match="TypeError"):
            client.api.add(1, 2, 3)
        assert client.api.add(1) == 1  # still serving


@pytest.mark.timeout(20)
def test_msgpack_carries_bytes(server: RpcServer) -> None:
    pytest.importorskip("msgpack")
    with RpcClient(server.endpoints, codec="msgpack") as client:
        assert client.call("echo.bytes", b"\x00\xff") == b"\x00\xff"
        assert client.api.add(1, 2) == 3


@pytest.mark.timeout(20)
async def test_asyncio_rpc_client(server: RpcServer) -> None:
    async with zasync.RpcClient(server.endpoints) as client:
        assert await client.api.add(20, 22) == 42
        assert "add" in await client.methods()
        with pytest.raises(RemoteError, match="MethodNotFound"):
            await client.api.missing()


@pytest.mark.timeout(20)
async def test_asyncio_rpc_server_awaits_async_methods_at_once_and_runs_plain_ones() -> None:
    server = zasync.RpcServer("tcp://127.0.0.1:0", concurrency=10)
    started: list[int] = []
    all_started, release = asyncio.Event(), asyncio.Event()

    @server.method
    async def slow(n: int) -> int:
        """Wait for the test's go."""
        started.append(n)
        if len(started) == 5:
            all_started.set()
        await release.wait()
        return n * 2

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    server.register(Images(), prefix="img.")
    async with server, zasync.RpcClient(server.endpoints) as client:
        calls = [asyncio.ensure_future(client.api.slow(i)) for i in range(5)]
        await asyncio.wait_for(all_started.wait(), 10)  # all five run at once: one at a time would never get here
        release.set()
        assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8]
        assert await client.api.add(2, 3) == 5
        offered = await client.methods()
        assert sorted(offered) == ["add", "img.fail", "img.resize", "slow"]
        assert offered["slow"]["doc"] == "Wait for the test's go."
        with pytest.raises(RemoteError) as info:
            await client.call("img.fail")
        assert info.value.remote_type == "KeyError"
        with pytest.raises(RemoteError, match="MethodNotFound"):
            await client.api.nope()


@pytest.mark.timeout(20)
async def test_a_plain_server_is_not_taken_for_an_rpc_server() -> None:
    # An echo sends the call back, [method, args, kwargs]; a plain server's answer to _methods is no method map.
    not_rpc = re.escape("not an RPC server (its reply is not an RPC answer)")
    with Server("tcp://127.0.0.1:0", lambda body: body) as echo, Server("tcp://127.0.0.1:0", lambda body: 7) as seven:
        with RpcClient(echo.endpoints, timeout=5) as client:
            with pytest.raises(ProtocolError, match=f"^{re.escape(echo.endpoints[0])}: {not_rpc}"):
                client.methods()
            with pytest.raises(ProtocolError, match=not_rpc):
                client.api.add(1, b=2)
        async with zasync.RpcClient(echo.endpoints, timeout=5) as aclient:
            with pytest.raises(ProtocolError, match=not_rpc):
                await aclient.methods()
            with pytest.raises(ProtocolError, match=not_rpc):
                await aclient.api.add(1, b=2)
        with RpcClient(seven.endpoints, timeout=5) as client, pytest.raises(ProtocolError, match=not_rpc):
            client.methods()


@pytest.mark.timeout(20)
def test_a_method_may_return_a_list_like_a_call(server: RpcServer) -> None:
    server.method("pair")(lambda a, b: [a, b, {}])
    with RpcClient(server.endpoints) as client:
        assert client.api.pair("other", []) == ["other", [], {}]  # not the call sent: no false alarm


def test_bad_registrations_raise_at_once() -> None:
    srv = RpcServer("tcp://127.0.0.1:0")
    with pytest.raises(ConfigurationError, match="'_hidden'"):
        srv.method("_hidden")(lambda: None)
    with pytest.raises(ConfigurationError, match="'yaml'"):
        RpcServer("tcp://127.0.0.1:0", codec="yaml")
    with pytest.raises(ConfigurationError, match="'bytes'"):
        RpcClient("tcp://127.0.0.1:5", codec="bytes")
