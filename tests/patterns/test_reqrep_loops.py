"""asyncio request-reply clients that outlive an event loop: a module-level client under successive
``asyncio.run`` calls (pytest-asyncio's loop per test) answers on each new loop, or refuses at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import zmqkit.asyncio as zasync
from zmqkit import ConfigurationError, Unavailable
from zmqkit.patterns import RpcServer, Server
from zmqkit.testing import wait_until

LOCAL = "tcp://127.0.0.1:0"


def run_bounded(main: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """``asyncio.run(main())`` in a thread of its own, failing the test (not hanging it) after ``timeout``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, asyncio.run(main())))  # type: ignore[arg-type]
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"asyncio.run did not return within {timeout}s: the client hangs"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@pytest.fixture
def echo() -> Iterator[Server]:
    with Server(LOCAL, lambda body: body, concurrency=2) as server:
        yield server


@pytest.fixture
def rpc() -> Iterator[RpcServer]:
    server = RpcServer(LOCAL)
    server.method("add")(lambda a, b: a + b)
    with server:
        yield server


@pytest.mark.timeout(30)
def test_a_client_answers_in_successive_event_loops(echo: Server) -> None:
    client = zasync.Client(echo.endpoints, timeout=2)  # made outside any loop, as at module level
    try:

        async def ask(body: bytes) -> Any:
            return await client.request(body)

        async def both() -> list[Any]:
            return await asyncio.gather(ask(b"a"), ask(b"b"))

        assert run_bounded(lambda: ask(b"first")) == b"first"
        assert run_bounded(lambda: ask(b"second")) == b"second"
        assert run_bounded(both) == [b"a", b"b"]
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_an_rpc_client_answers_in_successive_event_loops(rpc: RpcServer) -> None:
    client = zasync.RpcClient(rpc.endpoints, timeout=2)
    try:

        async def add(a: int, b: int) -> Any:
            return await client.api.add(a, b)

        assert run_bounded(lambda: add(1, 2)) == 3
        assert run_bounded(lambda: add(3, 4)) == 7
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_a_client_in_use_by_a_loop_running_elsewhere_refuses_another_loop_at_once(echo: Server) -> None:
    client = zasync.Client(echo.endpoints, timeout=2)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(client.request(b"there"), other).result(10) == b"there"

        async def ask_here() -> Any:
            return await client.request(b"here")

        with pytest.raises(ConfigurationError, match="in use by an event loop running in another thread"):
            run_bounded(ask_here)
        # The loop it serves is undisturbed.
        assert asyncio.run_coroutine_threadsafe(client.request(b"again"), other).result(10) == b"again"
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        client.close()
        other.close()


@pytest.mark.timeout(30)
def test_a_call_left_on_a_stopped_loop_fails_there_and_the_new_loop_is_served() -> None:
    release = threading.Event()
    with Server(LOCAL, lambda body: release.wait(10) and body, concurrency=2) as server:
        client = zasync.Client(server.endpoints, timeout=5)
        old = asyncio.new_event_loop()
        try:
            held = old.create_task(client.request(b"held"))

            held_now = asyncio.to_thread(wait_until, lambda: server.stats()["held"], 10, "the server to hold the call")
            old.run_until_complete(held_now)  # stopped, not closed, with a call waiting
            release.set()

            async def ask() -> Any:
                return await client.request(b"next")

            assert run_bounded(ask) == b"next"
            with pytest.raises(Unavailable, match="moved to another event loop"):
                old.run_until_complete(asyncio.wait_for(held, 10))
            proto = client._proto  # forgotten, as a cancelled call is: no place held, no retry to come
            assert not proto.pending and all(peer.in_flight == 0 for peer in proto.peers.values())
        finally:
            release.set()
            client.close()
            old.close()
