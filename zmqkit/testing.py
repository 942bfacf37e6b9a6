"""Helpers for tests that use real sockets: free ports, and fixtures that close everything they made.

In a conftest.py: ``pytest_plugins = ["zmqkit.testing"]`` gives the fixtures ``zmq_ctx``, ``raw_socket``,
``tcp_endpoint``, ``zmqkit_leak_check`` and ``cache_cluster`` (local cache nodes for your tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import zmq

from .endpoints import free_port as free_port
from .endpoints import free_tcp_endpoint as free_tcp_endpoint
from .sockets import open_sockets

if TYPE_CHECKING:
    from .cache import CacheClient, CacheNode

__all__ = [
    "wait_until",
    "free_port",
    "free_tcp_endpoint",
    "terminate",
    "zmq_ctx",
    "raw_socket",
    "tcp_endpoint",
    "zmqkit_leak_check",
    "CacheCluster",
    "cache_cluster",
]


def wait_until(condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.005) -> None:
    """Poll ``condition`` until it is true; after ``timeout`` seconds fail the test saying ``what`` never happened.

    For state another thread or process changes with no event to wait on; a regression then fails here with a
    clear message, not at pytest-timeout a minute later.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"within {timeout}s: {what}", pytrace=False)
        time.sleep(interval)


def terminate(ctx: zmq.Context, timeout: float = 5.0, *, close_sockets: bool = False) -> None:
    """Terminate ``ctx``, raising TimeoutError instead of hanging; ``close_sockets`` closes leftovers first."""
    done = threading.Event()

    def _term() -> None:
        # destroy() closes every socket still open with linger 0, then terminates.
        ctx.destroy(linger=0) if close_sockets else ctx.term()
        done.set()

    threading.Thread(target=_term, daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"zmq context did not terminate within {timeout}s: a socket was left open")


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A fresh zmq context for raw peer sockets; its sockets closed with linger 0, terminated under a timeout."""
    ctx = zmq.Context()
    yield ctx
    terminate(ctx, close_sockets=True)


@pytest.fixture
def raw_socket(zmq_ctx: zmq.Context) -> Iterator[Callable[..., zmq.Socket]]:
    """Make plain pyzmq sockets (the foreign peer in interop tests): ``raw_socket(zmq.DEALER)``."""
    made: list[zmq.Socket] = []

    def make(kind: int, **options: Any) -> zmq.Socket:
        sock = zmq_ctx.socket(kind)
        sock.linger = 0
        for name, value in options.items():
            setattr(sock, name, value)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def tcp_endpoint() -> str:
    """A loopback TCP endpoint on a free port."""
    return free_tcp_endpoint()


@pytest.fixture
def zmqkit_leak_check() -> Iterator[None]:
    """Fail the test if it leaves a socket made by zmqkit open (they are closed with linger 0 either way)."""
    before = set(map(id, open_sockets()))
    yield
    leaked = [s for s in open_sockets() if id(s) not in before]
    for sock in leaked:
        sock.close(linger=0)
    if leaked:
        kinds = ", ".join(sorted({zmq.SocketType(int(s.type)).name for s in leaked}))
        pytest.fail(f"test left {len(leaked)} zmqkit socket(s) open: {kinds}")


class CacheCluster:
    """Cache nodes serving in background threads on free loopback ports, and clients closed with them.

    >>> def test_it(cache_cluster):
    ...     cache = cache_cluster.client()
    ...     cache["k"] = "v"
    """

    def __init__(self, size: int = 3, **node_options: Any) -> None:
        from .cache import CacheNode

        self.nodes: list[CacheNode] = []
        self._clients: list[Any] = []
        try:
            for _ in range(size):
                node = CacheNode("tcp://127.0.0.1:0", **node_options)
                self.nodes.append(node)
                node.start()
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [str(node.endpoint) for node in self.nodes]

    def client(self, **options: Any) -> CacheClient:
        """A CacheClient over every node (closed with the cluster); ``options`` go to CacheClient."""
        from .cache import CacheClient

        client = CacheClient(self.endpoints, **options)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def cache_cluster(request: pytest.FixtureRequest) -> Iterator[CacheCluster]:
    """Three local cache nodes (``@pytest.mark.parametrize("cache_cluster", [N], indirect=True)`` for N)."""
    cluster = CacheCluster(getattr(request, "param", 3))
    try:
        yield cluster
    finally:
        cluster.close()
