"""Request-reply protocol (ZKR v3), sans I/O: messages, the client's pending table and server choice, the server's
idempotency window and graceful leave.

Every ZKR message is one frame. A client talks to each server over a connection of its own, so it sends and
receives bare message frames; a server's ROUTER sees the routing envelope before the message and answers it whole.
Nothing here touches a socket. Runners feed received messages in (``on_message``), send what lands in
``outbox``, report messages that could not be delivered (``undeliverable``) and call ``tick`` when
``next_deadline`` passes. Time comes from the injected ``clock``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import struct
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from zmqkit.codecs import Codec, unpack
from zmqkit.errors import ConfigurationError, ProtocolError, RemoteError, RequestTimeout, Unavailable
from zmqkit.wire import ProtocolId

__all__ = [
    "PROTOCOL",
    "HEADER",
    "REQUEST",
    "REPLY",
    "ERROR",
    "REJECT",
    "HELLO",
    "READY",
    "GOODBYE",
    "ACK",
    "ClientProtocol",
    "ServerProtocol",
    "Job",
    "Outcome",
    "error_payload",
    "parse_error",
    "message",
    "kind_of",
    "parse_message",
    "decode",
    "with_attempt",
    "describe_exception",
    "run_handler",
    "reply_of",
]

log = logging.getLogger(__name__)

PROTOCOL = ProtocolId(b"ZKR", 3)
HEADER = PROTOCOL.header
# The header opens the message frame; the kind byte follows it. One frame per message: each frame is a call into
# libzmq at both ends, and those calls, not the bytes, are what a round trip on loopback costs.
KIND_AT = len(HEADER)
REQUEST, REPLY, ERROR, REJECT = b"Q"[0], b"R"[0], b"E"[0], b"N"[0]
HELLO, READY, GOODBYE, ACK = b"H"[0], b"W"[0], b"G"[0], b"A"[0]
MAX_ID = 32
MAX_ATTEMPT = 255
MAX_HOPS = 32  # routing frames a server accepts before a message (a client's, then one per proxy)
_FIXED = KIND_AT + 4  # header, kind, attempt, codec, request id length
_RID_SIZE = 16  # the ids this client makes: 8 random bytes and a u64 counter
_BODY_AT = _FIXED + _RID_SIZE  # where the payload starts in an answer to one of them
_U32 = struct.Struct(">I")
_HELLO_CTL = HEADER + bytes([HELLO])
_ACK_CTL = HEADER + bytes([ACK])
_GOODBYE_CTL = HEADER + bytes([GOODBYE])
_REQUEST_HEAD = HEADER + bytes([REQUEST])
_REPLY_HEAD = HEADER + bytes([REPLY])

# Server choice: a server this request has not tried beats any number of requests in flight on one it has.
_UNTRIED_FIRST = 1 << 40
# Peer states, as the client sees a server.
CONNECTING, READY_, LEAVING, DOWN, SUSPECT = "connecting", "ready", "leaving", "down", "suspect"
# A server its service's membership put in maintenance: it finishes what it holds, gets nothing new and is not
# probed (a READY from it does not make it choosable again; only membership does).
DRAINING = "draining"

Outcome = tuple[bool, Any]  # (True, value) or (False, exception)


def message(kind: int, attempt: int, codec: int, request_id: bytes, payload: bytes = b"") -> bytes:
    """The message frame of a request, reply, error or reject: header, 4 fixed bytes, the request id, payload."""
    return HEADER + bytes((kind, attempt, codec, len(request_id))) + request_id + payload


def kind_of(frame: bytes) -> int:
    """The kind byte of a message frame; ProtocolError unless it opens with this protocol's header."""
    if frame[:KIND_AT] != HEADER or len(frame) == KIND_AT:
        PROTOCOL.check(bytes(frame[:KIND_AT]))
        raise ProtocolError("message frame has a header but no kind")
    return frame[KIND_AT]


def parse_message(frame: bytes) -> tuple[int, int, int, bytes, bytes]:
    """``(kind, attempt, codec, request id, payload)`` from a message frame; ProtocolError if it is malformed."""
    size = len(frame)
    if size < _FIXED or frame[:KIND_AT] != HEADER or frame[_FIXED - 1] > MAX_ID or size < _FIXED + frame[_FIXED - 1]:
        kind_of(frame)  # says what is wrong with the header, if that is it
        raise ProtocolError(f"message frame too short or request id too long: {bytes(frame[:40])!r}")
    n = _FIXED + frame[_FIXED - 1]
    return frame[KIND_AT], frame[KIND_AT + 1], frame[KIND_AT + 2], frame[_FIXED:n], frame[n:]


def decode(codec: int, payload: bytes, allow_pickle: bool) -> Any:
    """A payload's value by its codec id; plain bytes (id 0, the common case) without a codec lookup."""
    return payload if codec == 0 else unpack(codec, payload, allow_pickle=allow_pickle)


def with_attempt(frame: bytes, attempt: int) -> bytes:
    """A remembered answer frame, renumbered for a newer attempt of the same request."""
    return frame[: KIND_AT + 1] + bytes((attempt,)) + frame[KIND_AT + 2 :]


def error_payload(remote_type: str, message: str, tb: str = "") -> bytes:
    """An ERROR's payload: the remote type and the message, each after its u32 length, then the traceback."""
    kind, text = remote_type.encode(), message.encode(errors="replace")
    return _U32.pack(len(kind)) + kind + _U32.pack(len(text)) + text + tb.encode(errors="replace")


def parse_error(payload: bytes) -> RemoteError:
    """The RemoteError an ERROR payload describes (an unreadable one still becomes a RemoteError, saying so)."""
    texts: list[str] = []
    at = 0
    for _ in range(2):
        if len(payload) < at + 4 or len(payload) < at + 4 + _U32.unpack_from(payload, at)[0]:
            return RemoteError("ProtocolError", f"unreadable error payload from the server: {payload[:60]!r}", "")
        end = at + 4 + _U32.unpack_from(payload, at)[0]
        texts.append(payload[at + 4 : end].decode(errors="replace"))
        at = end
    return RemoteError(texts[0] or "Error", texts[1], payload[at:].decode(errors="replace"))


class _Peer:
    """One server, as a client sees it."""

    __slots__ = ("alias", "capacity", "endpoint", "in_flight", "limit", "probe_at", "probe_delay", "state")

    def __init__(self, alias: bytes, endpoint: str, now: float) -> None:
        self.alias = alias
        self.endpoint = endpoint
        self.state = CONNECTING
        self.in_flight = 0
        self.capacity = 0
        self.limit = 0  # min(capacity, the client's max_in_flight): requests of ours it may hold at once
        self.probe_at = now
        self.probe_delay = 0.0


class _Pending:
    """One request the client has not finished with."""

    __slots__ = ("attempt", "body", "codec", "deadline", "gen", "peer", "request_id", "retries_left", "tried")

    def __init__(self, request_id: bytes, codec: int, body: bytes, deadline: float, retries: int) -> None:
        self.request_id = request_id
        self.codec = codec
        self.body = body
        self.deadline = deadline
        self.retries_left = retries
        self.attempt = 0  # number of the most recent attempt sent (1-based on the wire)
        self.peer: _Peer | None = None  # server holding the current attempt, None while waiting
        self.gen = 0  # bumps whenever the timer is re-armed; stale heap entries carry an old gen
        self.tried: tuple[bytes, ...] = ()  # servers an attempt went to (a tuple: cheaper than a set for a few)


class ClientProtocol:
    """A client's view of many servers: which are ready, what each holds, and every request in flight.

    >>> proto = ClientProtocol({b"tcp://10.0.0.1:5555": "tcp://10.0.0.1:5555"})
    >>> rid = proto.submit(0, b"ping", timeout=2.0)   # then send proto.outbox, feed replies to on_message
    """

    def __init__(
        self,
        peers: dict[bytes, str],
        *,
        attempt_timeout: float | None = None,
        retries: int = 2,
        backoff: float = 0.01,
        backoff_max: float = 1.0,
        max_in_flight: int = 1000,
        probe_min: float = 0.01,
        probe_max: float = 1.0,
        allow_pickle: bool = False,
        dynamic: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``dynamic``: the server set follows a service's membership (:meth:`add_peer`, :meth:`drain_peer`,
        :meth:`remove_peer`), so it may start empty."""
        if not peers and not dynamic:
            raise ConfigurationError(f"bad endpoints {list(peers.values())!r}: give at least one server endpoint")
        if not isinstance(retries, int) or not 0 <= retries < MAX_ATTEMPT:
            raise ConfigurationError(f"bad retries={retries!r}: expected an integer from 0 to {MAX_ATTEMPT - 1}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigurationError(f"bad max_in_flight={max_in_flight!r}: expected a positive integer")
        for name, value in (("attempt_timeout", attempt_timeout), ("backoff", backoff), ("backoff_max", backoff_max)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0 or value != value):
                raise ConfigurationError(f"bad {name}={value!r}: expected seconds >= 0")
        if attempt_timeout == 0:
            raise ConfigurationError("bad attempt_timeout=0: expected seconds > 0 or None")
        self.clock = clock
        now = clock()
        self.peers = {alias: _Peer(alias, ep, now) for alias, ep in peers.items()}
        self._ring = list(self.peers.values())
        self._turn = 0
        self.attempt_timeout = attempt_timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_in_flight = max_in_flight
        self.probe_min = probe_min
        self.probe_max = probe_max
        self.allow_pickle = allow_pickle
        self.pending: dict[bytes, _Pending] = {}
        self.waiting: deque[bytes] = deque()
        self.outbox: list[tuple[bytes, bytes]] = []  # (server alias, message)
        self.completed: list[tuple[bytes, Outcome]] = []
        self.late_replies = 0
        self._timers: list[tuple[float, bytes, int]] = []
        self._probe_due = now
        self._prefix = os.urandom(8)
        self._seq = itertools.count(1)

    def servers_state(self) -> dict[bytes, str]:
        """Each server's state: connecting, ready, leaving, down, suspect or draining."""
        return {alias: peer.state for alias, peer in self.peers.items()}

    # ------------------------------------------------------------- membership
    def add_peer(self, alias: bytes, endpoint: str) -> None:
        """A server joined (or came back from maintenance): say hello to it now; it takes requests once ready."""
        now = self.clock()
        peer = self.peers.get(alias)
        if peer is None:
            peer = self.peers[alias] = _Peer(alias, endpoint, now)
            self._ring.append(peer)
        elif peer.state is DRAINING:
            peer.state = CONNECTING
        else:
            return
        peer.probe_delay = 0.0
        peer.probe_at = now
        self._probe_due = now

    def drain_peer(self, alias: bytes) -> None:
        """A server went into maintenance: no new requests go to it; those it holds are still answered."""
        peer = self.peers.get(alias)
        if peer is not None:
            peer.state = DRAINING

    def remove_peer(self, alias: bytes) -> None:
        """A server is gone (announced down, or expired): what it held goes to the others at once, as when its
        connection is lost; nothing more is sent to it."""
        peer = self.peers.pop(alias, None)
        if peer is None:
            return
        self._ring.remove(peer)
        self._turn = 0
        self.outbox[:] = [out for out in self.outbox if out[0] != alias]
        peer.state = DOWN
        now = self.clock()
        for p in [p for p in self.pending.values() if p.peer is peer]:
            self._requeue(p, now)

    # ----------------------------------------------------------------- requests
    def submit(self, codec: int, body: bytes, timeout: float | None) -> bytes:
        """Start a request (``timeout`` None: no limit); return its id. Its message goes to ``outbox`` if a
        server is free, else it waits for one."""
        now = self.clock()
        rid = self._prefix + next(self._seq).to_bytes(8, "big")
        p = _Pending(rid, codec, body, now + timeout if timeout is not None else math.inf, self.retries)
        self.pending[rid] = p
        if self.waiting or not self._send(p, now):  # behind those already waiting, or no server free
            self._arm(p, p.deadline)
            self.waiting.append(rid)
        return rid

    def cancel(self, rid: bytes) -> None:
        """Forget a request whose caller gave up (a cancelled coroutine); a server that has it still runs it."""
        p = self.pending.pop(rid, None)
        if p is not None and p.peer is not None:
            p.peer.in_flight -= 1

    def _arm(self, p: _Pending, when: float) -> None:
        p.gen += 1
        heapq.heappush(self._timers, (when, p.request_id, p.gen))
        if len(self._timers) > 64 + 4 * len(self.pending):
            # Finished requests leave their timers behind; rebuild now and then so the heap stays small.
            self._timers = [t for t in self._timers if (q := self.pending.get(t[1])) is not None and q.gen == t[2]]
            heapq.heapify(self._timers)

    def _pick(self, tried: tuple[bytes, ...]) -> _Peer | None:
        """The ready server with the fewest requests of ours in flight, preferring ones not ``tried`` yet."""
        ring = self._ring
        n = len(ring)
        if n < 2:  # one server (or a proxy): nothing to choose; none, while a service has no instance yet
            if not n:
                return None
            peer = ring[0]
            return peer if peer.state is READY_ and peer.in_flight < peer.limit else None
        best: _Peer | None = None
        best_key = _UNTRIED_FIRST * 2
        start = self._turn
        for i in range(n):
            peer = ring[(start + i) % n]
            if peer.state is not READY_ or peer.in_flight >= peer.limit:
                continue
            key = peer.in_flight + (_UNTRIED_FIRST if tried and peer.alias in tried else 0)
            if key < best_key:
                best, best_key = peer, key
                if key == 0:
                    break
        self._turn = (start + 1) % n
        return best

    def _send(self, p: _Pending, now: float) -> bool:
        """Send ``p``'s next attempt to the best server; False if none can take it now."""
        if p.attempt >= MAX_ATTEMPT:
            self._finish(p, Unavailable(f"request gave up after {MAX_ATTEMPT} attempts; servers keep refusing it"))
            return True
        peer = self._pick(p.tried)
        if peer is None:
            return False
        p.attempt += 1
        p.peer = peer
        if peer.alias not in p.tried:
            p.tried += (peer.alias,)
        peer.in_flight += 1
        self._arm(p, self._try_deadline(now, p.deadline, p.retries_left))
        self.outbox.append((peer.alias, _REQUEST_HEAD + bytes((p.attempt, p.codec, _RID_SIZE)) + p.request_id + p.body))
        return True

    def _try_deadline(self, now: float, deadline: float, retries_left: int) -> float:
        """When an attempt sent ``now`` times out: its share of the time left, never after the deadline."""
        remaining = deadline - now
        per_try = self.attempt_timeout if self.attempt_timeout is not None else remaining / (retries_left + 1)
        return now + (per_try if per_try < remaining else remaining)

    def _release(self, p: _Pending) -> None:
        if p.peer is not None:
            p.peer.in_flight -= 1
            p.peer = None

    def _finish(self, p: _Pending, result: Any, ok: bool = False) -> None:
        del self.pending[p.request_id]
        self._release(p)
        self.completed.append((p.request_id, (ok, result)))

    def _requeue(self, p: _Pending, now: float, delay: float = 0.0) -> None:
        """Take ``p`` off its server and send it again (after ``delay``) somewhere else."""
        self._release(p)
        if delay > 0:
            self._arm(p, min(now + delay, p.deadline))
        elif not self._send(p, now):
            self._arm(p, p.deadline)
            self.waiting.append(p.request_id)

    def _dispatch(self, now: float) -> None:
        """Send waiting requests while some server has room."""
        waiting = self.waiting
        while waiting:
            p = self.pending.get(waiting[0])
            if p is None or p.peer is not None:
                waiting.popleft()
                continue
            if not self._send(p, now):
                return
            waiting.popleft()

    # ------------------------------------------------------------------ inbound
    def on_message(self, alias: bytes, msg: bytes) -> None:
        """Handle one message from the server named ``alias``; a malformed one is logged and dropped."""
        # The common case first, in as few steps as it takes: the reply to the current attempt of a request.
        if len(msg) >= _BODY_AT and msg[: KIND_AT + 1] == _REPLY_HEAD and msg[_FIXED - 1] == _RID_SIZE:
            p = self.pending.get(msg[_FIXED:_BODY_AT])
            if p is not None and msg[KIND_AT + 1] == p.attempt:
                self._on_reply(p, msg[KIND_AT + 2], msg[_BODY_AT:])
                return
        try:
            self._on_message(alias, msg)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from %r: %s", alias[:64], exc)

    def _on_reply(self, p: _Pending, codec: int, payload: bytes) -> None:
        """Finish ``p`` with the value its reply carries (or the error decoding it); a server has room again."""
        try:
            value = decode(codec, payload, self.allow_pickle)
        except ProtocolError as exc:
            self._finish(p, exc)
        else:
            self._finish(p, value, ok=True)
        if self.waiting:
            self._dispatch(self.clock())

    def _on_message(self, alias: bytes, msg: bytes) -> None:
        kind = kind_of(msg)
        if kind in (REPLY, ERROR, REJECT):
            _, attempt, codec, rid, payload = parse_message(msg)
            p = self.pending.get(rid)
            if p is None or attempt != p.attempt:
                self.late_replies += 1  # an old attempt's answer, or one we gave up on: never mixed up
                return
            if kind == REPLY:
                self._on_reply(p, codec, payload)
            elif kind == ERROR:
                self._finish(p, parse_error(payload))
                if self.waiting:
                    self._dispatch(self.clock())
            else:
                # Refused (leaving or busy): straight to a server it has not tried, else back off first.
                self._requeue(p, self.clock(), 0.0 if len(p.tried) < len(self.peers) else self._backoff(p.attempt))
            return
        peer = self.peers.get(alias)
        if peer is None:
            raise ProtocolError(f"message from unknown server {alias[:64]!r}")
        now = self.clock()
        if kind == READY:
            if len(msg) != KIND_AT + 5:
                raise ProtocolError(f"a ready message is the header, W and a u32; got {len(msg)} bytes")
            peer.capacity = max(1, _U32.unpack_from(msg, KIND_AT + 1)[0])
            peer.limit = min(peer.capacity, self.max_in_flight)
            if peer.state is not DRAINING:
                peer.state = READY_
            peer.probe_delay = 0.0
            self._dispatch(now)
        elif kind == GOODBYE:
            # The server stops taking work; what it holds it still answers. Promise to send nothing more.
            if peer.state is not DOWN and peer.state is not DRAINING:
                peer.state = LEAVING
            self._probe_later(peer, now)
            self.outbox.append((peer.alias, _ACK_CTL))
        else:
            raise ProtocolError(f"unknown message kind {bytes([kind])!r} from a server")

    def undeliverable(self, alias: bytes, msg: bytes) -> None:
        """A message in ``outbox`` could not be sent to ``alias``: there is no connection to it.

        The server is down until it answers a probe, and whatever it held is sent elsewhere at once (lost with
        the connection), not after a timeout. (A runner must make sure a full queue never looks like this.)
        """
        peer = self.peers.get(alias)
        if peer is None:
            return
        now = self.clock()
        if peer.state is not DOWN:
            if peer.state is not DRAINING:  # (one in maintenance stays out of the choice, and is not probed)
                peer.state = DOWN
                self._probe_later(peer, now)
            for p in [p for p in self.pending.values() if p.peer is peer]:
                self._requeue(p, now)
        if msg[KIND_AT] == REQUEST:
            bounced = self.pending.get(parse_message(msg)[3])
            if bounced is not None and bounced.peer is peer:
                self._requeue(bounced, now)

    # ------------------------------------------------------------------- timers
    def next_deadline(self) -> float:
        """When ``tick`` next has something to do."""
        timers = self._timers
        pending = self.pending
        while timers:
            _, rid, gen = timers[0]
            p = pending.get(rid)
            if p is not None and p.gen == gen:
                return min(timers[0][0], self._probe_due)
            # A finished request's timer: gone now, so a waiting runner sleeps until a timer that matters.
            heapq.heappop(timers)
        return self._probe_due

    def tick(self) -> None:
        """Time out attempts, retry them elsewhere with backoff, fail requests past their deadline, probe servers."""
        now = self.clock()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, rid, gen = heapq.heappop(timers)
            p = self.pending.get(rid)
            if p is None or p.gen != gen:
                continue
            self._expire(p, now)
        if now >= self._probe_due:
            self._probe(now)
        self._dispatch(now)

    def _expire(self, p: _Pending, now: float) -> None:
        if now >= p.deadline:
            self._finish(p, self._timeout_error(p))
        elif p.peer is not None:
            # The attempt timed out: assume its server is in trouble until it answers a probe.
            peer = p.peer
            if peer.state is READY_:
                peer.state = SUSPECT
                self._probe_later(peer, now, self.probe_min)
            if p.retries_left == 0:
                self._finish(p, self._timeout_error(p))
                return
            p.retries_left -= 1
            self._requeue(p, now, self._backoff(p.attempt))
        elif not self._send(p, now):
            # A backoff ended (or a deadline check came up) and no server is free: wait for one.
            self._arm(p, p.deadline)
            self.waiting.append(p.request_id)

    def _timeout_error(self, p: _Pending) -> Exception:
        servers = ", ".join(self._endpoint_of(a) for a in sorted(p.tried)) or "none"
        if not p.attempt:
            known = ", ".join(f"{x.endpoint} ({x.state})" for x in self._ring)
            return Unavailable(f"no server was ready to take the request: {known}")
        return RequestTimeout(f"no reply after {p.attempt} attempt(s); servers tried: {servers}")

    def _endpoint_of(self, alias: bytes) -> str:
        peer = self.peers.get(alias)
        # A server removed since: its alias is its endpoint (or a stand-in for a very long one).
        return peer.endpoint if peer is not None else alias.decode(errors="replace")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff * (2 ** max(0, attempt - 1)))

    def _probe_later(self, peer: _Peer, now: float, delay: float | None = None) -> None:
        if delay is None:
            delay = min(self.probe_max, max(self.probe_min, peer.probe_delay * 2))
        peer.probe_delay = delay
        peer.probe_at = now + delay
        self._probe_due = min(self._probe_due, peer.probe_at)

    def _probe(self, now: float) -> None:
        """Say hello to servers that are not (known to be) ready: connecting, down, suspect or leaving."""
        due = float("inf")
        for peer in self._ring:
            if peer.state is READY_ or peer.state is DRAINING:
                continue
            if peer.probe_at <= now:
                self.outbox.append((peer.alias, _HELLO_CTL))
                self._probe_later(peer, now)
            due = min(due, peer.probe_at)
        self._probe_due = due

    def fail_all(self, exc: Exception) -> None:
        """Finish every pending request with ``exc`` (the client is closing)."""
        for p in list(self.pending.values()):
            self._finish(p, exc)


class Job:
    """One request a server accepted: who asked, its id and attempt, and the body to hand to the handler.

    The idempotency window holds the job while it runs; once it is done, its answer frames instead.
    """

    __slots__ = ("attempt", "body", "codec", "envelope", "key", "request_id")

    def __init__(
        self,
        envelope: list[bytes],
        request_id: bytes,
        attempt: int,
        codec: int,
        body: bytes,
        key: tuple[bytes, ...] | None = None,
    ) -> None:
        self.envelope = envelope
        self.request_id = request_id
        self.attempt = attempt
        self.codec = codec
        self.body = body
        self.key: tuple[bytes, ...] = key if key is not None else (*envelope, request_id)


class ServerProtocol:
    """A server's side: parse requests, bound what it holds, remember recent replies, and leave gracefully.

    >>> proto = ServerProtocol(max_queue=100, window=10_000)
    >>> job = proto.on_message(frames)       # a Job to run, or None (answer already in proto.outbox)
    >>> proto.finish(job, REPLY, 0, b"result")
    """

    def __init__(
        self,
        *,
        max_queue: int = 1000,
        window: int = 10_000,
        max_clients: int = 100_000,
        settle: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigurationError(f"bad max_queue={max_queue!r}: expected a positive integer")
        if not isinstance(window, int) or window < 0:
            raise ConfigurationError(f"bad idempotency window={window!r}: expected an integer >= 0 (0 turns it off)")
        self.clock = clock
        self.max_queue = max_queue
        self.window = window
        self.max_clients = max_clients
        self.outbox: list[list[bytes]] = []
        self.held = 0
        self.leaving = False
        self.settle = settle
        self.left_at = 0.0
        self.executed = 0
        self.duplicates = 0
        # request key -> its Job while it runs (the newest attempt is the one to answer), then its answer frame.
        # Bytes (and the tuples of bytes that are the keys) drop out of the garbage collector's sight, so
        # thousands of remembered answers cost no collector time; a Job would (measured: about 2 µs per request).
        # Two generations of plain dicts: when the newer fills up it becomes the older and the older is dropped,
        # so at least ``window`` (at most twice that) recent requests are remembered, at one dict store each.
        self._recent: dict[tuple[bytes, ...], Job | bytes] = {}
        self._older: dict[tuple[bytes, ...], Job | bytes] = {}
        self._clients: dict[tuple[bytes, ...], None] = {}  # envelopes that said hello, to say goodbye to
        self._unacked: set[tuple[bytes, ...]] = set()
        self._ready_ctl = HEADER + bytes([READY]) + _U32.pack(max_queue)

    def on_message(self, frames: list[bytes]) -> Job | None:
        """Handle one message from the ROUTER, ``[routing envelope..., message]``; return a Job to run, or None
        (any answer is in ``outbox``)."""
        if len(frames) == 2:
            # The common case first, in as few steps as it takes: a well-formed request straight from a client.
            msg = frames[1]
            size = len(msg)
            n = _FIXED + msg[_FIXED - 1] if size >= _FIXED else 0
            if _FIXED < n <= size and n <= _FIXED + MAX_ID and msg[: KIND_AT + 1] == _REQUEST_HEAD:
                alias = frames[0]
                rid = msg[_FIXED:n]
                return self._on_request([alias], msg[KIND_AT + 1], msg[KIND_AT + 2], rid, msg[n:], (alias, rid))
        envelope = frames[:-1]
        if not envelope or len(envelope) > MAX_HOPS:
            log.warning("dropped a message with %d routing frame(s) (1 to %d expected)", len(envelope), MAX_HOPS)
            return None
        msg = frames[-1]
        try:
            return self._on_body(envelope, msg)
        except ProtocolError as exc:
            log.warning("malformed request from %r: %s", envelope[0][:64], exc)
            try:
                kind, attempt, _, rid, _ = parse_message(msg)
                if kind != REQUEST:
                    raise ProtocolError("not a request")
            except ProtocolError:
                attempt, rid = 0, b""  # nothing to match the answer to; the peer sees an id-less error
            self.outbox.append([*envelope, message(ERROR, attempt, 0, rid, error_payload("ProtocolError", str(exc)))])
            return None

    def _on_body(self, envelope: list[bytes], msg: bytes) -> Job | None:
        kind = kind_of(msg)
        if kind == REQUEST:
            _, attempt, codec, rid, payload = parse_message(msg)
            if not rid:
                raise ProtocolError("a request needs a request id of 1-32 bytes")
            return self._on_request(envelope, attempt, codec, rid, payload)
        key = tuple(envelope)
        if kind == HELLO:
            if self.leaving:
                self._unacked.add(key)
                self.outbox.append([*envelope, _GOODBYE_CTL])
            else:
                if key not in self._clients and len(self._clients) >= self.max_clients:
                    self._clients.pop(next(iter(self._clients)))
                self._clients[key] = None
                self.outbox.append([*envelope, self._ready_ctl])
            return None
        if kind == ACK:
            self._unacked.discard(key)
            return None
        raise ProtocolError(f"unknown message kind {bytes([kind])!r}")

    def _on_request(
        self,
        envelope: list[bytes],
        attempt: int,
        codec: int,
        rid: bytes,
        body: bytes,
        key: tuple[bytes, ...] | None = None,
    ) -> Job | None:
        if key is None:
            key = (*envelope, rid)
        if self.window:
            seen = self._recent.get(key)
            if seen is None:
                seen = self._older.get(key)
            if seen is not None:
                self.duplicates += 1
                if isinstance(seen, Job):
                    seen.attempt = attempt  # still running: answer this newest attempt when it finishes
                else:
                    self.outbox.append([*envelope, with_attempt(seen, attempt)])
                return None
        if self.leaving or self.held >= self.max_queue:
            reason = b"leaving" if self.leaving else b"busy"
            self.outbox.append([*envelope, message(REJECT, attempt, 0, rid, reason)])
            return None
        job = Job(envelope, rid, attempt, codec, body, key)
        self.held += 1
        if self.window:
            recent = self._recent
            recent[key] = job
            if len(recent) >= self.window:
                self._older = recent
                self._recent = {}
        return job

    def finish(self, job: Job, kind: int, codec: int, payload: bytes) -> None:
        """The handler is done with ``job``: queue its REPLY or ERROR (see :func:`error_payload`) and remember it
        in the window."""
        self.held -= 1
        self.executed += 1
        rid = job.request_id
        answer = (
            _REPLY_HEAD + bytes((job.attempt, codec, len(rid))) + rid + payload
            if kind == REPLY
            else message(kind, job.attempt, codec, rid, payload)
        )
        if self.window:
            # A retry from now on gets this answer without running again. It replaces the job's entry where that
            # is: a finish is not an arrival, and must not fill the newer generation (which moves the window on,
            # and can drop a job that still runs on a handler thread).
            key = job.key
            if key in self._older and key not in self._recent:
                self._older[key] = answer
            else:
                self._recent[key] = answer
        self.outbox.append([*job.envelope, answer])

    def leave(self) -> None:
        """Stop taking work: goodbye to every client that said hello; new requests are rejected from now on."""
        if self.leaving:
            return
        self.leaving = True
        self.left_at = self.clock()
        for key in self._clients:
            self._unacked.add(key)
            self.outbox.append([*key, _GOODBYE_CTL])

    def client_gone(self, envelope: Sequence[bytes]) -> None:
        """A message to this client could not be delivered: it left; do not wait for its goodbye ack."""
        key = tuple(envelope)
        self._clients.pop(key, None)
        self._unacked.discard(key)

    @property
    def drained(self) -> bool:
        """Leaving, nothing held, and every client that knew us has promised to send nothing more.

        A client that does not answer the goodbye within ``settle`` seconds is idle (a sync client between
        calls reads the goodbye before it chooses a server), so it is not waited for any longer.
        """
        if not self.leaving or self.held:
            return False
        return not self._unacked or self.clock() >= self.left_at + self.settle


def describe_exception(exc: BaseException) -> bytes:
    """The ERROR payload for an exception raised by a handler: type, message, traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return error_payload(type(exc).__name__, str(exc), tb)


def reply_of(codec: Codec, result: Any) -> tuple[int, int, bytes]:
    """A handler's result as ``(REPLY, codec id, payload)`` for ``ServerProtocol.finish``."""
    cid, payload = codec.pack(result)
    return REPLY, cid, payload


def run_handler(handler: Callable[[Any], Any], codec: Codec, allow_pickle: bool, job: Job) -> tuple[int, int, bytes]:
    """Decode ``job``, call ``handler``, encode the result: ``(kind, codec id, payload)``; failures become ERROR."""
    try:
        # decode and reply_of written out: this runs once per request, and calls cost more than they look
        cid, payload = codec.pack(
            handler(job.body if job.codec == 0 else unpack(job.codec, job.body, allow_pickle=allow_pickle))
        )
        return REPLY, cid, payload
    except Exception as exc:
        return ERROR, 0, describe_exception(exc)
