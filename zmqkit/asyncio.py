"""Async twins of the zmqkit classes: the same names and methods, with I/O methods as coroutines.

``from zmqkit.asyncio import CacheClient`` mirrors ``from zmqkit.cache import CacheClient``. Both share one
protocol implementation; only the runner differs.
"""

from __future__ import annotations

from .cache.aio import AsyncCacheClient as CacheClient
from .patterns.fanout import Forwarder as Forwarder
from .patterns.fanout_async import AsyncDirectory as Directory
from .patterns.fanout_async import AsyncPresence as Presence
from .patterns.fanout_async import AsyncPublisher as Publisher
from .patterns.fanout_async import AsyncSubscriber as Subscriber
from .patterns.pipeline_async import Producer as Producer
from .patterns.pipeline_async import Sink as Sink
from .patterns.pipeline_async import Worker as Worker
from .patterns.reqrep_async import AsyncClient as Client
from .patterns.reqrep_async import AsyncServer as Server
from .patterns.rpc import AsyncRpcClient as RpcClient
from .patterns.rpc import AsyncRpcServer as RpcServer
from .sockets import async_context as async_context

__all__ = [
    "async_context",
    # cache
    "CacheClient",
    # pipeline
    "Producer",
    "Sink",
    "Worker",
    # fanout
    "Directory",
    "Forwarder",
    "Presence",
    "Publisher",
    "Subscriber",
    # request-reply
    "Client",
    "RpcClient",
    "RpcServer",
    "Server",
]
