"""check_new_loop: when a client bound to one event loop may serve another; the asyncio CacheClient moves."""

from __future__ import annotations

import asyncio
import threading

import pytest

from zmqkit import ConfigurationError
from zmqkit.asyncio import CacheClient
from zmqkit.loops import check_new_loop
from zmqkit.testing import CacheCluster


def test_a_stopped_loop_may_be_left_a_running_one_not() -> None:
    stopped = asyncio.new_event_loop()
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    try:

        async def check() -> None:
            check_new_loop(None, "a client", movable=False)  # not bound yet
            check_new_loop(asyncio.get_running_loop(), "a client", movable=False)  # its own loop
            check_new_loop(stopped, "a client", movable=True)
            with pytest.raises(ConfigurationError, match=r"^a client is bound to the event loop it was first"):
                check_new_loop(stopped, "a client", movable=False)
            with pytest.raises(ConfigurationError, match=r"^a client is in use by an event loop running in another"):
                check_new_loop(running, "a client", movable=True)

        asyncio.run(check())
    finally:
        running.call_soon_threadsafe(running.stop)
        thread.join(10)
        running.close()
        stopped.close()


@pytest.mark.timeout(30)
def test_the_asyncio_cache_client_moves_to_the_next_loop() -> None:
    cluster = CacheCluster(1)
    cache = CacheClient(cluster.endpoints, timeout=2)
    try:

        async def roundtrip(value: int) -> object:
            await cache.set("k", value)
            return await cache.get("k")

        assert asyncio.run(roundtrip(1)) == 1
        assert asyncio.run(roundtrip(2)) == 2  # the first loop has ended: the client serves this one
    finally:
        cache.close()
        cluster.close()
