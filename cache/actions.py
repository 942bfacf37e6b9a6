"""The I/O actions a cache command (a generator in ``core.py``) yields, and the helpers both runners use to
drive it: ``advance`` resumes a command, ``parse_reply`` reads a node's reply off a DEALER."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from zmqkit.errors import ProtocolError

from .protocol import HEAD, HEADER, decode_reply

__all__ = ["Call", "Batch", "Sleep", "Compute", "Reply", "Op", "advance", "parse_reply"]

log = logging.getLogger(__name__)

Reply = tuple[int, list[bytes]]  # (status, result frames)
Op = Generator[Any, Any, Any]


_RID = len(HEADER)
_REPLY_HEAD = HEAD + 1  # header, request id, status


class Call:
    """One request to one node: DEALER frames (empty delimiter first) and the request id to match the reply."""

    __slots__ = ("frames", "items", "node", "rejoin", "rid")

    def __init__(self, node: int, rid: bytes, frames: list[bytes], items: list[int], rejoin: bool = False) -> None:
        self.node = node
        self.rid = rid
        self.frames = frames
        self.items = items
        self.rejoin = rejoin


class Batch:
    """Send every call at once, then wait up to ``timeout`` s; the runner answers ``{rid: Reply}``."""

    __slots__ = ("calls", "timeout")

    def __init__(self, calls: list[Call], timeout: float) -> None:
        self.calls = calls
        self.timeout = timeout


class Sleep:
    """Wait ``seconds`` (lease waiters back off between asks); the runner answers None."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Compute:
    """Call the memoized function; the runner answers its result (awaited if it is a coroutine)."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def run(self) -> tuple[Any, Exception | None]:
        """``(result, None)`` or ``(None, the exception)``, to hand back to the op."""
        try:
            return self.fn(*self.args, **self.kwargs), None
        except Exception as exc:
            return None, exc


def advance(op: Op, value: Any, error: Exception | None) -> tuple[bool, Any]:
    """Resume ``op`` with ``value`` (or throw ``error`` into it): ``(True, result)`` once it has finished,
    else ``(False, the next action)``. The runners' whole loop is this, plus doing the action."""
    try:
        return False, (op.send(value) if error is None else op.throw(error))
    except StopIteration as stop:
        return True, stop.value


def parse_reply(frames: list[bytes]) -> tuple[bytes, Reply] | None:
    """``(rid, (status, results))`` from a DEALER's received frames, or None (logged) if malformed."""
    if len(frames) >= 2:
        head = frames[1]
        if len(head) == _REPLY_HEAD and head.startswith(HEADER):  # the hot path, checked inline
            return head[_RID:HEAD], (head[HEAD], frames[2:])
    try:
        rid, status, results = decode_reply(frames[1:])
    except ProtocolError as exc:
        log.warning("dropped a malformed reply: %s", exc)
        return None
    return rid, (status, results)
