"""The asyncio request-reply server: coroutine handlers, bounded concurrency, errors, graceful leave."""

from __future__ import annotations

import asyncio

import pytest

import zmqkit.asyncio as zasync
from zmqkit import RemoteError
from zmqkit.patterns import Client

LOCAL = "tcp://127.0.0.1:0"


@pytest.mark.timeout(20)
async def test_coroutine_handlers_run_concurrently_up_to_the_bound() -> None:
    running = peak = 0

    async def handler(body: bytes) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        if body == b"bad":
            raise ValueError("bad body")
        return body.upper()

    async with zasync.Server(LOCAL, handler, concurrency=8) as server, zasync.Client(server.endpoints) as client:
        replies = await asyncio.gather(*(client.request(b"r%d" % i) for i in range(40)))
        with pytest.raises(RemoteError, match="ValueError: bad body"):
            await client.request(b"bad")
    assert replies == [b"R%d" % i for i in range(40)]
    assert 1 < peak <= 8


@pytest.mark.timeout(20)
async def test_plain_function_handler_and_a_sync_client_in_a_thread() -> None:
    async with zasync.Server(LOCAL, lambda body: body[::-1]) as server:

        def call() -> bytes:
            with Client(server.endpoints, timeout=5) as client:
                return client.request(b"abc")  # type: ignore[no-any-return]

        assert await asyncio.to_thread(call) == b"cba"


@pytest.mark.timeout(30)
async def test_async_server_leaves_under_load_without_a_failed_call() -> None:
    async def handler(body: bytes) -> bytes:
        await asyncio.sleep(0.002)
        return body

    servers = [await zasync.Server(LOCAL, handler, concurrency=20).start() for _ in range(2)]
    try:
        done = 0
        hundred = asyncio.Event()
        async with zasync.Client([s.endpoints[0] for s in servers], timeout=10) as client:

            async def lane(k: int) -> None:
                nonlocal done
                for i in range(40):
                    assert await client.request(b"%d-%d" % (k, i)) == b"%d-%d" % (k, i)
                    done += 1
                    if done == 100:
                        hundred.set()

            lanes = asyncio.gather(*(lane(k) for k in range(10)))
            await asyncio.wait_for(hundred.wait(), 10)
            assert await servers[0].leave(10) is True
            await lanes
        assert done == 400
        assert servers[0].stats()["executed"] > 0 and servers[1].stats()["executed"] > 0
    finally:
        for s in servers:
            s.close()
