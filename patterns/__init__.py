"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from .fanout import Forwarder as Forwarder
from .fanout import Publisher as Publisher
from .fanout import Subscriber as Subscriber
from .presence import Directory as Directory
from .presence import Presence as Presence

__all__: list[str] = [
    "Directory",
    "Forwarder",
    "Presence",
    "Publisher",
    "Subscriber",
]
