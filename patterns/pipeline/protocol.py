"""The pipeline protocol (ZKP v1), sans I/O: frames, the producer's in-flight table and a worker's side of it.

Nothing here touches a socket or reads the time by itself: runners feed frames in, take frames out, and the
producer's timers run on an injected ``clock`` (and its backoff jitter on an injected ``random``), so retries,
redelivery and dead-lettering are tested without sleeping.

Acknowledged mode (ROUTER at the producer, one DEALER per producer at each worker)::

    worker -> producer   READY credit [most] | HB | DONE ids [id+codec, payload]... | FAIL id delay type text | BYE
    producer -> worker   TASK (id attempt codec length payload)... | HELLO | BYE

Fire-and-forget mode is plain PUSH/PULL, one frame per message: bare bytes, or ``ZKP1`` + codec + payload.
See docs/wire.md, section Pipeline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random as _random
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from zmqkit.checks import check_int, check_number
from zmqkit.codecs import unpack
from zmqkit.errors import ConfigurationError, ProtocolError
from zmqkit.wire import ProtocolId, pack_u32, unpack_u32, unpack_u64

__all__ = [
    "HEADER",
    "Retry",
    "Backoff",
    "DeadLetter",
    "Refused",
    "Result",
    "Task",
    "SpoolLike",
    "ProducerProtocol",
    "WorkerProtocol",
    "encode_message",
    "decode_message",
    "encode_result",
    "decode_result",
]

log = logging.getLogger(__name__)

HEADER = ProtocolId(b"ZKP", 1)
HDR = HEADER.header
READY, HB, DONE, FAIL, BYE, TASK, HELLO, RESULT = (
    b"READY",
    b"HB",
    b"DONE",
    b"FAIL",
    b"BYE",
    b"TASK",
    b"HELLO",
    b"RESULT",
)
_TASK_HEAD = struct.Struct(">QIBI")  # message id, attempt number, codec id, payload length
_RESULT_HEAD = struct.Struct(">QB")  # message id, codec id
_ID = struct.Struct(">Q")


class Retry(Exception):
    """Raised by a handler to try the message again later: ``raise Retry(delay=30)`` (seconds).

    Without ``delay`` the producer's exponential backoff picks the delay. Counts towards ``max_attempts``.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
            raise ConfigurationError(f"bad Retry delay {delay!r}: expected seconds >= 0 or None")
        super().__init__(reason or (f"retry in {delay}s" if delay is not None else "retry"))
        self.delay = delay
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits ``min(maximum, base * factor**(n-1))``, less up to
    ``jitter`` of that at random (so failed messages do not all come back at once).

    >>> Backoff(base=1, factor=2, maximum=10, jitter=0).delay(3, lambda: 0.5)
    4.0
    """

    base: float = 0.5
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("base", "factor", "maximum", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"bad Backoff {name}={value!r}: expected a number >= 0")
        if self.jitter > 1:
            raise ConfigurationError(f"bad Backoff jitter={self.jitter!r}: expected 0..1")

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failed."""
        full = min(self.maximum, self.base * self.factor ** max(0, attempt - 1))
        return full * (1.0 - self.jitter * random())


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed ``attempts`` times; ``error`` says how it failed last."""

    id: int
    value: Any
    attempts: int
    error: str


@dataclass(frozen=True)
class Refused:
    """Stands in for a value the producer would not decode (a pickled payload without ``allow_pickle``):
    ``payload`` holds its raw bytes, ``codec`` its codec id, ``reason`` why."""

    codec: int
    payload: bytes
    reason: str


PICKLE_REFUSED = "pickled payload refused: pass allow_pickle=True to decode"


@dataclass(frozen=True)
class Result:
    """What a handler returned for message ``id``."""

    id: int
    value: Any


class Task(NamedTuple):
    """One message as a worker sees it: ``attempt`` counts from 1 (a tuple: workers make many)."""

    id: int
    attempt: int
    codec: int
    payload: bytes


class SpoolLike(Protocol):
    """What the producer protocol needs from a durable spool (see :class:`zmqkit.patterns.pipeline.spool.Spool`)."""

    def add(self, codec: int, payload: bytes) -> int: ...
    def ack(self, ids: Sequence[int]) -> None: ...
    def dead(self, msg_id: int, attempts: int, error: str) -> None: ...
    def retried(self, msg_id: int, attempts: int) -> None: ...
    def revive(self, msg_id: int) -> None: ...
    def pending(self) -> Iterable[tuple[int, int, bytes, int]]: ...
    def dead_letters(self, offset: int = 0, limit: int | None = None) -> Iterable[tuple[int, int, bytes, int, str]]: ...
    def dead_letter(self, msg_id: int) -> tuple[int, bytes] | None: ...
    def dead_count(self) -> int: ...
    def take_resubmits(self) -> list[int]: ...


# -- fire-and-forget and sink frames ------------------------------------------------------------------------


def encode_message(codec: int, payload: bytes) -> bytes:
    """The one frame of a fire-and-forget message: bare bytes as they are (what a raw PUSH peer sends), any
    other codec (or bytes that happen to start with the header) as ``ZKP1`` + codec byte + payload."""
    if codec == 0 and not payload.startswith(HDR):
        return payload
    return HDR + bytes([codec]) + payload


def decode_message(frame: bytes) -> tuple[int, bytes]:
    """``(codec, payload)`` of a fire-and-forget frame; ProtocolError if it has the header but no codec."""
    if not frame.startswith(HDR):
        return 0, frame
    if len(frame) < len(HDR) + 1:
        raise ProtocolError("fire-and-forget frame with the ZKP1 header must carry a codec byte")
    return frame[len(HDR)], frame[len(HDR) + 1 :]


def encode_result(msg_id: int, codec: int, payload: bytes) -> list[bytes]:
    """Frames a worker pushes to a Sink."""
    return [HDR, RESULT, _RESULT_HEAD.pack(msg_id, codec), payload]


def decode_result(frames: Sequence[bytes]) -> tuple[int, int, bytes]:
    """``(id, codec, payload)`` of a Sink message; ProtocolError if malformed."""
    if len(frames) != 4 or frames[1] != RESULT or len(frames[2]) != _RESULT_HEAD.size:
        raise ProtocolError(f"sink message must be [ZKP1, RESULT, id+codec, payload], got {len(frames)} frames")
    HEADER.check(frames[0])
    msg_id, codec = _RESULT_HEAD.unpack(frames[2])
    return msg_id, codec, frames[3]


# -- producer -----------------------------------------------------------------------------------------------

_QUEUED, _SENT, _WAITING, _FINISHED = range(4)


class _Msg:
    __slots__ = ("attempts", "codec", "id", "payload", "state", "worker")

    def __init__(self, msg_id: int, codec: int, payload: bytes) -> None:
        self.id = msg_id
        self.codec = codec
        self.payload = payload
        self.attempts = 0
        self.state = _QUEUED
        self.worker: bytes | None = None


class _Peer:
    """A worker connection as the producer sees it.

    ``capacity`` starts at the credit the worker announced (``floor``) and, when it also announced a ``most``,
    doubles up to ``most`` each time the worker finishes everything it holds while work waits here (the round
    trip, not the worker, was the limit); it falls back to ``floor`` once the worker holds work and finishes
    none for ``_SLOW`` seconds, so a worker that turns slow stops taking more than its announced credit.
    """

    __slots__ = ("capacity", "credit", "floor", "held", "last_done", "last_seen", "leaving", "most")

    def __init__(self, credit: int, most: int, now: float) -> None:
        self.floor = self.capacity = self.credit = credit
        self.most = max(most, credit)
        self.held: set[int] = set()
        self.last_seen = self.last_done = now
        self.leaving = False

    def resize(self, capacity: int) -> None:
        """Change the capacity; credit follows (below zero while the worker holds more than the new one)."""
        self.credit += capacity - self.capacity
        self.capacity = capacity


_MAILBOX = 1.0  # seconds between looks at the spool for dead letters another process asked to resubmit
_SLOW = 0.25  # seconds a grown worker may hold work without finishing any before it is back to its floor


@dataclass
class _Counters:
    sent: int = 0
    delivered: int = 0
    acked: int = 0
    retried: int = 0
    redelivered: int = 0
    dead: int = 0
    duplicates: int = 0
    malformed: int = 0
    dead_dropped: int = 0


class ProducerProtocol:
    """The producer's state: accepted messages until acknowledged or dead, per-worker credit, timers.

    Runners call :meth:`accept` for each new message, :meth:`handle` with every frame list the ROUTER
    receives (routing id first), :meth:`tick` when :meth:`next_timer` says so, and send what
    :meth:`dispatch` and :meth:`handle` return. A worker that has not been heard from (any frame, including
    heartbeats) for ``worker_timeout`` seconds is lost: what it held goes back to the queue.

    Dead letters live in the spool when there is one (not in memory); otherwise the newest
    ``max_dead_letters`` are kept and older ones are dropped and counted (``dead_dropped``).

    >>> p = ProducerProtocol(clock=lambda: 0.0)
    >>> p.accept(0, b"job")
    1
    """

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        worker_timeout: float = 5.0,
        max_queued: int = 10_000,
        batch: int = 256,
        max_results: int = 100_000,
        max_dead_letters: int = 10_000,
        spool: SpoolLike | None = None,
        allow_pickle: bool = False,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        check_int("max_attempts", max_attempts, 1)
        check_int("max_queued", max_queued, 1)
        check_int("batch", batch, 1)
        check_int("max_results", max_results, 0)
        check_int("max_dead_letters", max_dead_letters, 0)
        check_number("worker_timeout", worker_timeout, 0.0, above=True)
        self.max_attempts = max_attempts
        self.backoff = backoff if backoff is not None else Backoff()
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(f"bad backoff {backoff!r}: expected a zmqkit.patterns.Backoff")
        self.worker_timeout = float(worker_timeout)
        self.max_queued = max_queued
        self.batch = batch
        self.allow_pickle = allow_pickle
        self.clock = clock
        self.random = random
        self.spool = spool
        self._mailbox_at = clock()  # when to look at the spool's resubmit requests next
        self.counters = _Counters()
        self.messages: dict[int, _Msg] = {}  # every message accepted and not yet finished
        self.queue: deque[_Msg] = deque()  # waiting for a worker with credit
        self.queued = 0  # live entries in ``queue`` (finished ones are skipped lazily)
        self.waiting: list[tuple[float, int, _Msg]] = []  # retries by due time
        self.peers: dict[bytes, _Peer] = {}
        self.results: deque[Result] = deque(maxlen=max_results or None)
        self.max_dead_letters = max_dead_letters
        self.dead: dict[int, DeadLetter] = {}  # without a spool only, oldest first, at most max_dead_letters
        self._next_id = 1
        self._seq = 0
        self.hungry = False  # see dispatch()
        if spool is not None:
            self._load_spool(spool)

    # -- accepting work

    def full(self) -> bool:
        """True when ``max_queued`` messages wait for a worker: the runner applies backpressure."""
        return self.queued >= self.max_queued

    def accept(self, codec: int, payload: bytes) -> int:
        """Take a message (spooled first when there is a spool); return its id."""
        if self.spool is None:
            msg_id = self._next_id
            self._next_id = msg_id + 1
        else:
            msg_id = self.spool.add(codec, payload)
            self._next_id = max(self._next_id, msg_id + 1)
        msg = _Msg(msg_id, codec, payload)
        self.messages[msg_id] = msg
        self.queue.append(msg)
        self.queued += 1
        self.counters.sent += 1
        return msg_id

    def resubmit(self, msg_id: int) -> None:
        """Send a dead letter again with a fresh attempt count."""
        if self.spool is not None:
            row = self.spool.dead_letter(msg_id)
            if row is None:
                raise ConfigurationError(f"no dead letter with id {msg_id!r}")
            codec, payload = row
            self.spool.revive(msg_id)
        else:
            letter = self.dead.pop(msg_id, None)
            if letter is None:
                raise ConfigurationError(f"no dead letter with id {msg_id!r} (dropped, or never dead)")
            codec, payload = letter.value
        msg = _Msg(msg_id, codec, payload)
        self.messages[msg_id] = msg
        self.queue.append(msg)
        self.queued += 1

    # -- incoming frames

    def handle(self, frames: list[bytes]) -> list[list[bytes]]:
        """Apply one message from a worker (``[routing id, b"", ZKP1, command, ...]``); return replies."""
        try:
            return self._handle(frames)
        except (ProtocolError, struct.error, IndexError, ValueError) as exc:
            self.counters.malformed += 1
            log.warning("dropped malformed pipeline message from worker %r: %s", frames[0] if frames else b"", exc)
            return []

    def _handle(self, frames: list[bytes]) -> list[list[bytes]]:
        if len(frames) < 4 or frames[1] != b"":
            raise ProtocolError(f"expected [routing id, empty, ZKP1, command, ...], got {len(frames)} frames")
        ident, command = frames[0], frames[3]
        if frames[2] != HDR:
            HEADER.check(frames[2])
        now = self.clock()
        peer = self.peers.get(ident)
        if command == READY:
            if len(frames) not in (5, 6):
                raise ProtocolError("READY must carry a u32 credit frame and optionally a u32 most frame")
            credit = unpack_u32(frames[4], "credit")
            most = unpack_u32(frames[5], "most") if len(frames) == 6 else credit
            if peer is None:
                self.peers[ident] = _Peer(credit, most, now)
            else:
                # A second READY answers a repeated HELLO; its credit was counted before our TASKs arrived.
                peer.last_seen = now
            return []
        if peer is None:
            # A worker we do not know (we restarted, or declared it lost): ask it to introduce itself.
            if command == DONE:
                self._done(None, frames)
            return [[ident, b"", HDR, BYE if command == BYE else HELLO]]
        peer.last_seen = now
        reply = []
        if command == DONE:
            peer.credit += self._done(peer, frames)
            peer.last_done = now
            if not peer.held and self.queued and peer.capacity < peer.most and not peer.leaving:
                peer.resize(min(peer.most, 2 * peer.capacity))  # it ran dry while work waited: send more at once
        elif command == FAIL:
            self._fail(ident, peer, frames)
            peer.last_done = now
        elif command == BYE:
            peer.leaving = True
            peer.credit = 0
            reply = [[ident, b"", HDR, BYE]]
        elif command != HB:
            raise ProtocolError(f"unknown pipeline command {bytes(command[:16])!r}")
        if peer.leaving and not peer.held:
            del self.peers[ident]  # it said goodbye and owes us nothing: not a lost worker
        return reply

    def _done(self, peer: _Peer | None, frames: list[bytes]) -> int:
        if len(frames) < 5 or len(frames[4]) % 8 or len(frames) % 2 == 0:
            raise ProtocolError("DONE must be [ZKP1, DONE, ids(8n bytes), (id+codec, payload)...]")
        ids = [i for (i,) in _ID.iter_unpack(frames[4])]
        results = {}
        for k in range(5, len(frames), 2):
            if len(frames[k]) != _RESULT_HEAD.size:
                raise ProtocolError("DONE result head must be 9 bytes: id u64 + codec u8")
            msg_id, codec = _RESULT_HEAD.unpack(frames[k])
            results[msg_id] = (codec, frames[k + 1])
        finished = []
        pop, finish = self.messages.pop, self._finish
        held = peer.held if peer is not None else set()
        for msg_id in ids:  # the hot path: plain acknowledgements, mostly from the worker that holds them
            msg = pop(msg_id, None)
            if msg is not None:
                if msg_id in held:
                    held.discard(msg_id)
                    msg.state = _FINISHED
                else:
                    finish(msg)
                finished.append(msg_id)
        for msg_id, (codec, payload) in results.items():
            msg = pop(msg_id, None)
            if msg is None:
                continue
            finish(msg)
            finished.append(msg_id)
            try:
                self.results.append(Result(msg_id, unpack(codec, payload, allow_pickle=self.allow_pickle)))
            except ProtocolError as exc:
                log.warning("result of message %d could not be decoded: %s", msg_id, exc)
        self.counters.acked += len(finished)
        self.counters.duplicates += len(ids) + len(results) - len(finished)
        if self.spool is not None and finished:
            self.spool.ack(finished)
        return len(ids) + len(results)

    def _fail(self, ident: bytes, peer: _Peer, frames: list[bytes]) -> None:
        if len(frames) != 8:
            raise ProtocolError("FAIL must be [ZKP1, FAIL, id, delay, type, message]")
        msg_id = unpack_u64(frames[4], "message id")
        delay = float(int(frames[5])) / 1000.0 if frames[5] else None
        error = f"{frames[6].decode(errors='replace')}: {frames[7].decode(errors='replace')}"
        peer.credit += 1
        msg = self.messages.get(msg_id)
        if msg is None or msg.state != _SENT or msg.worker != ident:
            # Finished, or redelivered elsewhere after this worker was presumed lost: the new holder decides.
            return
        peer.held.discard(msg_id)
        self._failed(msg, error, delay)

    def _failed(self, msg: _Msg, error: str, delay: float | None) -> None:
        """One attempt of ``msg`` failed: schedule a retry or dead-letter it."""
        msg.worker = None
        if msg.attempts >= self.max_attempts:
            self.messages.pop(msg.id, None)
            self._finish(msg)
            self.counters.dead += 1
            if self.spool is not None:
                self.spool.dead(msg.id, msg.attempts, error)  # kept there, not in memory
            else:
                self._keep_dead(DeadLetter(msg.id, (msg.codec, msg.payload), msg.attempts, error))
            log.info("message %d dead after %d attempts: %s", msg.id, msg.attempts, error)
            return
        if self.spool is not None:  # so a restarted producer does not give a failing message a fresh count
            self.spool.retried(msg.id, msg.attempts)
        if delay is None:
            delay = self.backoff.delay(msg.attempts, self.random)
        msg.state = _WAITING
        self._seq += 1
        heapq.heappush(self.waiting, (self.clock() + delay, self._seq, msg))
        self.counters.retried += 1

    def _keep_dead(self, letter: DeadLetter) -> None:
        dead = self.dead
        dead[letter.id] = letter
        while len(dead) > self.max_dead_letters:
            del dead[next(iter(dead))]  # the oldest
            self.counters.dead_dropped += 1

    def dead_page(self, offset: int = 0, limit: int = 100) -> list[tuple[int, int, bytes, int, str]]:
        """``(id, codec, payload, attempts, error)`` of at most ``limit`` dead letters after the first ``offset``,
        oldest first (undecoded: the caller decodes outside any lock)."""
        check_int("offset", offset, 0)
        check_int("limit", limit, 0)
        if self.spool is not None:
            return list(self.spool.dead_letters(offset, limit))
        page = itertools.islice(self.dead.values(), offset, offset + limit)
        return [(d.id, d.value[0], d.value[1], d.attempts, d.error) for d in page]

    def dead_count(self) -> int:
        """Dead letters kept now (in the spool, or in memory)."""
        return self.spool.dead_count() if self.spool is not None else len(self.dead)

    def _finish(self, msg: _Msg) -> None:
        if msg.state == _QUEUED:
            self.queued -= 1
        elif msg.state == _SENT and msg.worker is not None:
            peer = self.peers.get(msg.worker)
            if peer is not None:
                peer.held.discard(msg.id)
        msg.state = _FINISHED

    # -- timers

    def tick(self) -> None:
        """Move due retries back to the queue, redeliver what lost workers held, and (once a second, with a
        spool) resubmit the dead letters ``zmqkit dead resubmit`` asked for from another process."""
        now = self.clock()
        if self.spool is not None and now >= self._mailbox_at:
            self._mailbox_at = now + _MAILBOX
            for msg_id in self.spool.take_resubmits():
                try:
                    self.resubmit(msg_id)
                except ConfigurationError as exc:  # purged or resubmitted meanwhile
                    log.warning("resubmit request for %d ignored: %s", msg_id, exc)
        while self.waiting and self.waiting[0][0] <= now:
            msg = heapq.heappop(self.waiting)[2]
            if msg.state == _WAITING:
                msg.state = _QUEUED
                self.queue.appendleft(msg)
                self.queued += 1
        for ident, peer in list(self.peers.items()):
            if peer.capacity > peer.floor and peer.held and now - peer.last_done > _SLOW:
                peer.resize(peer.floor)  # it stopped keeping up: no more than it asked for at first
            if now - peer.last_seen > self.worker_timeout:
                log.warning("worker %r silent for %.1fs: redelivering what it held", ident, now - peer.last_seen)
                self.lose(ident)

    def lose(self, ident: bytes) -> None:
        """Forget worker ``ident`` (silent too long, or unreachable) and redeliver what it held."""
        peer = self.peers.pop(ident, None)
        if peer is None:
            return
        for msg_id in sorted(peer.held, reverse=True):
            msg = self.messages.get(msg_id)
            if msg is None or msg.state != _SENT:
                continue
            self.counters.redelivered += 1
            if msg.attempts >= self.max_attempts:
                self._failed(msg, f"WorkerLost: the worker died or hung {msg.attempts} times running it", 0)
            else:
                msg.state, msg.worker = _QUEUED, None
                self.queue.appendleft(msg)
                self.queued += 1

    def next_timer(self) -> float | None:
        """Seconds until :meth:`tick` has something to do (None: nothing pending)."""
        due = []
        if self.waiting:
            due.append(self.waiting[0][0])
        if self.peers:
            due.append(min(p.last_seen for p in self.peers.values()) + self.worker_timeout)
            due += [p.last_done + _SLOW for p in self.peers.values() if p.capacity > p.floor and p.held]
        return max(0.0, min(due) - self.clock()) if due else None

    # -- outgoing

    def dispatch(self) -> list[list[bytes]]:
        """TASK messages for workers with credit, each at most ``batch`` long, round-robin over workers."""
        out: list[list[bytes]] = []
        # Refill a worker once half its credit is back (or it holds nothing): fewer, bigger TASK batches, and
        # the other half keeps it busy meanwhile.
        open_peers = [
            (i, p)
            for i, p in self.peers.items()
            if p.credit > 0 and not p.leaving and (2 * p.credit >= p.capacity or not p.held)
        ]
        queue, pack = self.queue, _TASK_HEAD.pack
        while self.queued and open_peers:
            still_open = []
            for ident, peer in open_peers:
                # One frame for the whole batch: a frame per task costs more than the task itself.
                parts = []
                n = min(peer.credit, self.batch)
                while n and self.queued:
                    msg = queue.popleft()
                    if msg.state != _QUEUED:
                        continue
                    self.queued -= 1
                    n -= 1
                    msg.attempts += 1
                    msg.state, msg.worker = _SENT, ident
                    peer.held.add(msg.id)
                    parts.append(pack(msg.id, msg.attempts, msg.codec, len(msg.payload)))
                    parts.append(msg.payload)
                sent = len(parts) // 2
                if sent:
                    peer.credit -= sent
                    self.counters.delivered += sent
                    out.append([ident, b"", HDR, TASK, b"".join(parts)])
                if peer.credit > 0:
                    still_open.append((ident, peer))
            open_peers = still_open
        # Workers left wanting because the queue ran dry: the next accept() is worth a wake-up of the runner.
        self.hungry = bool(open_peers)
        return out

    # -- state

    def idle(self) -> bool:
        """True when every accepted message is acknowledged or dead."""
        return not self.messages

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "sent": c.sent,
            "delivered": c.delivered,
            "acked": c.acked,
            "in_flight": len(self.messages),
            "queued": self.queued,
            "retrying": sum(1 for _, _, m in self.waiting if m.state == _WAITING),
            "retried": c.retried,
            "redelivered": c.redelivered,
            "dead": c.dead,
            "dead_dropped": c.dead_dropped,
            "duplicates": c.duplicates,
            "malformed": c.malformed,
            "workers": len(self.peers),
        }

    def unfinished(self) -> list[tuple[int, int, bytes]]:
        """``(id, codec, payload)`` of every message not yet acknowledged or dead."""
        return [(m.id, m.codec, m.payload) for m in self.messages.values()]

    def _load_spool(self, spool: SpoolLike) -> None:
        for msg_id, codec, payload, attempts in spool.pending():
            msg = _Msg(msg_id, codec, payload)
            msg.attempts = attempts
            self.messages[msg_id] = msg
            self.queue.append(msg)
            self.queued += 1
            self._next_id = max(self._next_id, msg_id + 1)
        # Dead letters stay in the spool: dead_page() reads them from there a page at a time.


# -- worker -------------------------------------------------------------------------------------------------


@dataclass
class WorkerProtocol:
    """One worker's side of one producer connection: credit, the tasks in hand, and the acks to send.

    The runner sends :meth:`ready` first, feeds every received frame list to :meth:`feed` (which returns tasks
    to run and replies), reports each outcome with :meth:`succeeded` / :meth:`failed`, and sends
    :meth:`flush` after each batch.
    """

    credit: int
    most: int = 0  # more than ``credit``: the producer may raise this worker's credit up to it while it keeps up
    held: int = 0
    closing: bool = False  # we sent BYE
    closed: bool = False  # the producer answered BYE: nothing more will come
    greet: bool = False  # a send failed (no producer connected): send READY the moment the socket is writable
    _acks: list[int] = field(default_factory=list)
    _results: list[bytes] = field(default_factory=list)
    _fails: list[list[bytes]] = field(default_factory=list)

    def ready(self) -> list[bytes]:
        """READY announcing how many more tasks this worker takes (capacity less what it holds), and at most."""
        frames = [b"", HDR, READY, pack_u32(max(0, self.credit - self.held))]
        if self.most > self.credit:
            frames.append(pack_u32(max(0, self.most - self.held)))
        return frames

    def heartbeat(self) -> list[bytes]:
        """HB; while stopping, BYE again instead (the first one may have gone into a pipe that then broke)."""
        return [b"", HDR, BYE] if self.closing and not self.closed else [b"", HDR, HB]

    def unreachable(self) -> None:
        """The producer could not be sent to: while stopping, that means nothing more will come from it;
        otherwise greet it with READY as soon as it is connected (runners watch for the socket to be writable),
        rather than wait for a heartbeat to be answered with HELLO."""
        if self.closing:
            self.closed = True
        else:
            self.greet = True

    def greeting(self) -> list[bytes]:
        """READY for a producer that just became reachable (see :meth:`unreachable`)."""
        self.greet = False
        return self.ready()

    def bye(self) -> list[bytes]:
        self.closing = True
        return [b"", HDR, BYE]

    def feed(self, frames: list[bytes]) -> tuple[list[Task], list[list[bytes]]]:
        """Parse one message from the producer: ``(tasks to run, frames to send back)``."""
        try:
            if len(frames) < 3 or frames[0] != b"" or frames[1] != HDR:
                if len(frames) >= 2:
                    HEADER.check(frames[1])
                raise ProtocolError(f"expected [empty, ZKP1, command, ...], got {len(frames)} frames")
            command = frames[2]
            if command == TASK:
                if len(frames) != 4:
                    raise ProtocolError("TASK must be [empty, ZKP1, TASK, tasks]")
                tasks = _parse_tasks(frames[3])
                self.held += len(tasks)
                return tasks, []
            if command == HELLO:
                return [], [self.bye() if self.closing else self.ready()]
            if command == BYE:
                self.closed = True
                return [], []
            raise ProtocolError(f"unknown pipeline command {bytes(command[:16])!r}")
        except (ProtocolError, struct.error) as exc:
            log.warning("dropped malformed pipeline message from producer: %s", exc)
            return [], []

    def acked(self, ids: list[int]) -> None:
        """Record that messages ``ids`` ran and returned nothing."""
        self.held -= len(ids)
        self._acks += ids

    def succeeded(self, task: Task, result: Any, codec: Any) -> None:
        """Record that ``task`` ran; a result other than None travels back to the producer."""
        self.held -= 1
        if result is None:
            self._acks.append(task.id)
        else:
            cid, payload = codec.pack(result)
            self._results += (_RESULT_HEAD.pack(task.id, cid), payload)

    def failed(self, task: Task, exc: BaseException) -> None:
        """Record that the handler raised ``exc``: the producer decides between retry and dead letter."""
        self.held -= 1
        delay = b"%d" % round(exc.delay * 1000) if isinstance(exc, Retry) and exc.delay is not None else b""
        self._fails.append(
            [b"", HDR, FAIL, _ID.pack(task.id), delay, type(exc).__name__.encode(), str(exc)[:2000].encode()]
        )

    @property
    def finished(self) -> bool:
        """A stopping worker is done with this producer: it answered BYE (or is gone), every task in hand
        ran, and every outcome was handed out by :meth:`flush`."""
        return self.closed and not self.held and not self.unflushed

    @property
    def unflushed(self) -> int:
        """Outcomes recorded and not yet handed out by :meth:`flush`."""
        return len(self._acks) + len(self._results) // 2 + len(self._fails)

    def flush(self) -> list[list[bytes]]:
        """Messages that carry the outcomes recorded since the last flush."""
        out = self._fails
        self._fails = []
        if self._acks or self._results:
            out.append([b"", HDR, DONE, struct.pack(f">{len(self._acks)}Q", *self._acks), *self._results])
            self._acks, self._results = [], []
        return out


def _parse_tasks(blob: bytes) -> list[Task]:
    """Split a TASK frame into tasks: (id u64, attempt u32, codec u8, length u32, payload)..."""
    tasks: list[Task] = []
    pos, end, unpack_head, size, new = 0, len(blob), _TASK_HEAD.unpack_from, _TASK_HEAD.size, tuple.__new__
    while pos < end:
        msg_id, attempt, codec, length = unpack_head(blob, pos)
        pos += size
        if pos + length > end:
            raise ProtocolError(f"TASK payload of message {msg_id} runs past the frame ({length} bytes)")
        # tuple.__new__ skips NamedTuple's Python-level __new__: this loop runs once per message.
        tasks.append(new(Task, (msg_id, attempt, codec, blob[pos : pos + length])))
        pos += length
    return tasks
