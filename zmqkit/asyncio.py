"""Async twins of the zmqkit classes: the same names and methods, with I/O methods as coroutines.

``from zmqkit.asyncio import CacheClient`` mirrors ``from zmqkit.cache import CacheClient``. Both share one
protocol implementation; only the runner differs.
"""

from __future__ import annotations

from .cache.aio import AsyncCacheClient as CacheClient
from .patterns.fanout.aio import AsyncPublisher as Publisher
from .patterns.fanout.aio import AsyncSubscriber as Subscriber
from .patterns.fanout.sync import Forwarder as Forwarder
from .patterns.pipeline.aio import Producer as Producer
from .patterns.pipeline.aio import Sink as Sink
from .patterns.pipeline.aio import Worker as Worker
from .patterns.presence.aio import AsyncDirectory as Directory
from .patterns.presence.aio import AsyncPresence as Presence
from .patterns.reqrep.aio import AsyncClient as Client
from .patterns.reqrep.aio import AsyncServer as Server
from .patterns.reqrep.rpc import AsyncRpcClient as RpcClient
from .patterns.reqrep.rpc import AsyncRpcServer as RpcServer
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
