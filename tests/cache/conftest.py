"""Fixtures for the cache tests: one test body runs against the sync and the asyncio client, on 1 or 3 nodes."""

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from zmqkit.asyncio import CacheClient as AsyncCacheClient
from zmqkit.cache import CacheClient
from zmqkit.testing import CacheCluster


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def run(result: Any) -> Any:
    """The value of a sync call, or the awaited value of an asyncio one."""
    return await result if inspect.isawaitable(result) else result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[1, 3], ids=["1node", "3nodes"])
def cluster(request: pytest.FixtureRequest, clock: FakeClock) -> Any:
    nodes = CacheCluster(request.param, clock=clock, max_item="64K")
    yield nodes
    nodes.close()


@pytest.fixture(params=["sync", "asyncio"])
async def cache(request: pytest.FixtureRequest, cluster: CacheCluster) -> AsyncIterator[Any]:
    kind = CacheClient if request.param == "sync" else AsyncCacheClient
    client = kind(cluster.endpoints, timeout=5.0)
    yield client
    client.close()
