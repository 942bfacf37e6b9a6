"""The I/O actions the pipeline's logic (core.py) yields, and its runners (sync.py, aio.py) perform."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from .core import Lane
    from .protocol import Task, WorkerProtocol

__all__ = [
    "NOTIFY",
    "WAKE",
    "Action",
    "Notify",
    "Poll",
    "Recv",
    "Run",
    "Send",
    "Steps",
    "T",
    "Wait",
    "Wake",
    "Writable",
]

T = TypeVar("T")


class Send(NamedTuple):
    """Send ``frames``; the outcome is False when not sent (no peer, pipe full, peer gone). ``block``: wait
    for room (for ever) instead."""

    sock: Any
    frames: list[bytes]
    block: bool = False


class Writable(NamedTuple):
    """Wait until ``sock`` takes a message, up to ``timeout`` seconds (None: no limit); outcome: whether it does."""

    sock: Any
    timeout: float | None


class Poll(NamedTuple):
    """Poll ``items`` (socket, events) for ``ms`` milliseconds; outcome: the (socket, events) that are ready."""

    items: list[tuple[Any, int]]
    ms: int


class Recv(NamedTuple):
    """Receive what is queued on ``sock`` (at most :data:`DRAIN` messages); outcome: the list of messages."""

    sock: Any


class Wait(NamedTuple):
    """Wait until ``ready()`` (rechecked on every :data:`NOTIFY`), up to ``timeout``; outcome: whether it is."""

    ready: Callable[[], object]
    timeout: float | None


class Run(NamedTuple):
    """Run ``tasks`` from ``sock`` through the handler, recording each outcome in ``proto``."""

    lane: Lane
    sock: Any
    proto: WorkerProtocol
    tasks: list[Task]


class Wake(NamedTuple):
    """Wake the producer's I/O loop (accepted work or a resubmitted letter waits)."""


class Notify(NamedTuple):
    """Tell every :class:`Wait` to look again (the producer's state changed)."""


WAKE = Wake()
NOTIFY = Notify()
Action = Send | Writable | Poll | Recv | Wait | Run | Wake | Notify
Steps = Generator[Action, Any, T]  # a piece of logic; a runner performs its actions and returns its value
