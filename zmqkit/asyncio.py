"""Async twins of the zmqkit classes: the same names and methods, with I/O methods as coroutines.

``from zmqkit.asyncio import CacheClient`` mirrors ``from zmqkit.cache import CacheClient``. Both share one
protocol implementation; only the runner differs.
"""

from __future__ import annotations

# pipeline
from zmqkit.patterns.pipeline_aio import Producer as Producer
from zmqkit.patterns.pipeline_aio import Sink as Sink
from zmqkit.patterns.pipeline_aio import Worker as Worker

from .sockets import async_context as async_context

__all__ = ["async_context"]
__all__ += ["Producer", "Sink", "Worker"]
