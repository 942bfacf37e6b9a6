"""Fanout (PUB/SUB): protocol (sans-I/O), sync runners, asyncio runners, log streaming and CLI."""

from .logs import LogHandler as LogHandler
from .sync import Forwarder as Forwarder
from .sync import Publisher as Publisher
from .sync import Subscriber as Subscriber

__all__ = ["Forwarder", "LogHandler", "Publisher", "Subscriber"]
