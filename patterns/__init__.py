"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from .pipeline import Producer as Producer
from .pipeline import Sink as Sink
from .pipeline import Worker as Worker
from .pipeline_protocol import Backoff as Backoff
from .pipeline_protocol import DeadLetter as DeadLetter
from .pipeline_protocol import Result as Result
from .pipeline_protocol import Retry as Retry

__all__: list[str] = ["Backoff", "DeadLetter", "Producer", "Result", "Retry", "Sink", "Worker"]
