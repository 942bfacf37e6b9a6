"""Pipeline (PUSH/PULL): protocol (sans-I/O), sync runners, asyncio runners, spool and CLI, one module each."""

from .protocol import Backoff as Backoff
from .protocol import DeadLetter as DeadLetter
from .protocol import Refused as Refused
from .protocol import Result as Result
from .protocol import Retry as Retry
from .sync import Producer as Producer
from .sync import Sink as Sink
from .sync import Worker as Worker

__all__ = ["Backoff", "DeadLetter", "Producer", "Refused", "Result", "Retry", "Sink", "Worker"]
