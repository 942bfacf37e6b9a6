"""The I/O actions a cache command (a generator in ``core.py``) yields, and the helpers both runners use to
drive it: ``advance`` resumes a command, ``parse_reply`` reads a node's reply."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from zmqkit.errors import ProtocolError

from .protocol import HEAD, HEADER, decode_reply

__all__ = [
    "Call",
    "Batch",
    "Sleep",
    "Compute",
    "Reply",
    "Op",
    "advance",
    "first_reply",
    "parse_reply",
    "parse_dealer_reply",
]

log = logging.getLogger(__name__)

Reply = tuple[int, bytes]  # (status, body)
Op = Generator[Any, Any, Any]


_RID = len(HEADER)


class Call:
    """One request to one node: its frame, and the request id to match the reply."""

    __slots__ = ("frame", "items", "node", "rejoin", "rid")

    def __init__(self, node: int, rid: bytes, frame: bytes, items: list[int], rejoin: bool = False) -> None:
        self.node = node
        self.rid = rid
        self.frame = frame
        self.items = items
        self.rejoin = rejoin


class Batch:
    """Send every call at once, then wait up to ``timeout`` s (None: no limit); the runner answers
    ``{rid: Reply}``."""

    __slots__ = ("calls", "timeout")

    def __init__(self, calls: list[Call], timeout: float | None) -> None:
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


def first_reply(batch: Batch, first: tuple[int, Reply | None] | None) -> dict[bytes, Reply] | None:
    """The answer to ``batch`` when it is the one request a fast get already made to node ``first[0]`` (with
    ``first[1]`` its reply, or None for no answer); None when the batch must go out."""
    if first is None or len(batch.calls) != 1 or batch.calls[0].node != first[0]:
        return None
    return {} if first[1] is None else {batch.calls[0].rid: first[1]}


def parse_reply(frame: bytes) -> tuple[bytes, Reply] | None:
    """``(rid, (status, body))`` from a reply frame, or None (logged) if malformed."""
    if frame.startswith(HEADER) and len(frame) > HEAD:  # the hot path, checked inline
        return frame[_RID:HEAD], (frame[HEAD], frame[HEAD + 1 :])
    try:
        rid, status, body = decode_reply(frame)
    except ProtocolError as exc:
        log.warning("dropped a malformed reply: %s", exc)
        return None
    return rid, (status, body)


def parse_dealer_reply(frames: list[bytes]) -> tuple[bytes, Reply] | None:
    """:func:`parse_reply` of a message read off a DEALER: the empty delimiter, then the reply frame."""
    if len(frames) == 2 and not frames[0]:
        return parse_reply(frames[1])
    log.warning("dropped a reply of %d frame(s); expected the empty delimiter and one frame", len(frames))
    return None
