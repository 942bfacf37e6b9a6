"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from .fanout import Forwarder as Forwarder
from .fanout import Publisher as Publisher
from .fanout import Subscriber as Subscriber

__all__: list[str] = [
    "Forwarder",
    "Publisher",
    "Subscriber",
]
