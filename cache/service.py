"""The node's request handler, sans-I/O: a request message in, the reply frame out, run against a Store.

A malformed request gets a BAD_REQUEST reply (never an exception), so the node keeps serving; it is counted
(``malformed`` in stats) and logged at most once per :data:`MALFORMED_LOG_INTERVAL` per peer, with a count.

>>> service = Service(Store())
>>> service.handle(HEADER + b"\\x00\\x00\\x00\\x01\\x13")  # ping
b'ZKC\\x03\\x00\\x00\\x00\\x01\\x00...node id...'
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from zmqkit._version import __version__
from zmqkit.errors import ProtocolError

from .protocol import (
    GET_OPCODE,
    HEAD,
    HEADER,
    NOT_FOUND_BYTE,
    OK_BYTE,
    Status,
    decode_request,
    encode_reply,
    pack_list,
    read_u32,
    read_u64,
    request_id,
    u64,
    unpack_list,
)
from .store import MAX_KEY, NotANumber, Store, TooLarge

__all__ = ["Service", "LogLimit", "MALFORMED_LOG_INTERVAL"]

log = logging.getLogger(__name__)
_OK = Status.OK
_H = len(HEADER)
_Handler = Callable[[list[bytes]], tuple[Status, bytes]]
MALFORMED_LOG_INTERVAL = 10.0  # seconds between two warnings about one peer's bad requests
_PEERS_MAX = 1024  # peers whose warnings are timed; the longest quiet goes first


class LogLimit:
    """Log one warning per peer per ``interval`` (on ``clock``), saying how many were held back meanwhile; the
    peer table is bounded (``max_peers``), so a flood from many addresses costs bounded memory."""

    def __init__(self, clock: Callable[[], float], interval: float = MALFORMED_LOG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.max_peers = _PEERS_MAX
        self._peers: OrderedDict[str, list[float]] = OrderedDict()  # peer -> [time of its last line, held back]

    def warn(self, peer: str, message: str) -> bool:
        """Log ``message`` for ``peer`` unless it had a line less than ``interval`` ago; True if logged."""
        now = self.clock()
        seen = self._peers.get(peer)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        held = int(seen[1]) if seen is not None else 0
        self._peers[peer] = [now, 0]
        self._peers.move_to_end(peer)
        if len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        more = f" ({held} more from this peer in the last {now - seen[0]:.0f}s)" if seen is not None and held else ""
        log.warning("bad request from %s: %s%s", peer, message, more)
        return True


def _key(frame: bytes) -> bytes:
    if not 0 < len(frame) <= MAX_KEY:
        raise ProtocolError(f"a key must be 1 to {MAX_KEY} bytes, got {len(frame)}")
    return frame


def _keys(frame: bytes) -> list[bytes]:
    return [_key(k) for k in unpack_list(frame, "keys")]


def _value(frame: bytes) -> bytes:
    if not frame:
        raise ProtocolError("a value frame must start with its codec byte; got an empty frame")
    return frame


class Service:
    """Runs requests on ``store``: ``handle(request frame) -> the reply frame``."""

    def __init__(self, store: Store, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.node_id = os.urandom(8)  # changes on every start: a client can tell a restarted node
        self.malformed = 0  # requests answered BAD_REQUEST
        self.log_limit = LogLimit(clock or store.clock)
        # A REP socket does not say which peer sent a message (libzmq keeps the address in each message's
        # metadata, and reading every request as a zmq.Frame to see it would slow the hot path), so every
        # request to this node counts as from one peer: its endpoint, once the node knows it.
        self.peer = "a client"
        s = store
        self._handlers: dict[bytes, _Handler] = {
            b"gets": self._gets,
            b"get_many": lambda a: (_OK, pack_list(s.get_many(_keys(a[0])))),
            b"set": lambda a: self._store(s.set(_key(a[0]), _value(a[1]), read_u32(a[2], "ttl")) >= 0),
            b"add": lambda a: self._store(s.add(_key(a[0]), _value(a[1]), read_u32(a[2], "ttl"))),
            b"replace": lambda a: self._store(s.replace(_key(a[0]), _value(a[1]), read_u32(a[2], "ttl"))),
            b"append": lambda a: self._store(s.append(_key(a[0]), a[1])),
            b"prepend": lambda a: self._store(s.prepend(_key(a[0]), a[1])),
            b"cas": self._cas,
            b"delete": lambda a: (_OK if s.delete(_key(a[0])) else Status.NOT_FOUND, b""),
            b"delete_many": lambda a: (_OK, bytes(0 if s.delete(k) else 1 for k in _keys(a[0]))),
            b"set_many": self._set_many,
            b"incr": lambda a: self._number(s.incr(_key(a[0]), read_u64(a[1], "delta"))),
            b"decr": lambda a: self._number(s.decr(_key(a[0]), read_u64(a[1], "delta"))),
            b"touch": lambda a: (_OK if s.touch(_key(a[0]), read_u32(a[1], "ttl")) else Status.NOT_FOUND, b""),
            b"flush_all": self._flush_all,
            b"stats": self._stats,
            b"version": lambda a: (_OK, __version__.encode()),
            b"ping": lambda a: (_OK, self.node_id),
            b"lease_get": self._lease_get,
            b"lease_set": self._lease_set,
        }

    def handle(self, frame: bytes) -> bytes:
        """The reply frame for one request frame; bad input gets an error reply, never an exception."""
        try:
            if frame[HEAD : HEAD + 1] == GET_OPCODE and frame[:_H] == HEADER:
                # The hottest command, served inline: a reply is the request's header and id, then the outcome.
                # A get is counted as a hit or a miss (Store.stats), one with a bad key here.
                try:
                    key = _key(frame[HEAD + 1 :])
                except ProtocolError:
                    self.store.commands[b"get"] += 1
                    raise
                value = self.store.get(key)
                return frame[:HEAD] + (NOT_FOUND_BYTE if value is None else OK_BYTE + value)
            rid, command, args = decode_request(frame)
            self.store.commands[command] += 1
            status, body = self._handlers[command](args)
        except Exception as exc:
            # The request id is echoed even when the rest is bad, so a pipelining client can match the error.
            return self._error(request_id(frame), exc)
        return encode_reply(rid, status, body)

    def refuse(self, frames: list[bytes]) -> bytes:
        """The BAD_REQUEST reply to a message of more than one frame (a request is exactly one)."""
        exc = ProtocolError(f"a request is one frame, got {len(frames)}")
        return self._error(request_id(frames[0] if frames else b""), exc)

    def _error(self, rid: bytes, exc: Exception) -> bytes:
        """The error reply for ``exc``: the client's fault, the value's, or the node's."""
        if isinstance(exc, ProtocolError):
            self.malformed += 1
            self.log_limit.warn(self.peer, str(exc))
            return encode_reply(rid, Status.BAD_REQUEST, str(exc).encode())
        if isinstance(exc, TooLarge):
            return encode_reply(rid, Status.TOO_LARGE, str(exc).encode())
        if isinstance(exc, NotANumber):
            return encode_reply(rid, Status.NOT_A_NUMBER, str(exc).encode())
        log.error("request failed", exc_info=exc)  # a bug must not take the node down; the client sees SERVER_ERROR
        return encode_reply(rid, Status.SERVER_ERROR, f"{type(exc).__name__}: {exc}".encode())

    @staticmethod
    def _store(stored: bool) -> tuple[Status, bytes]:
        return (_OK if stored else Status.NOT_STORED), b""

    @staticmethod
    def _number(value: int | None) -> tuple[Status, bytes]:
        return (Status.NOT_FOUND, b"") if value is None else (_OK, u64(value))

    def _gets(self, args: list[bytes]) -> tuple[Status, bytes]:
        found = self.store.gets(_key(args[0]))
        return (Status.NOT_FOUND, b"") if found is None else (_OK, u64(found[1]) + found[0])

    def _cas(self, args: list[bytes]) -> tuple[Status, bytes]:
        done = self.store.cas(_key(args[0]), _value(args[1]), read_u32(args[2], "ttl"), read_u64(args[3], "cas"))
        return {True: _OK, False: Status.EXISTS, None: Status.NOT_FOUND}[done], b""

    def _set_many(self, args: list[bytes]) -> tuple[Status, bytes]:
        ttl = read_u32(args[0], "ttl")
        pairs = unpack_list(args[1], "set_many items")
        if len(pairs) % 2:
            raise ProtocolError("set_many's items must be key, value pairs; got an odd number of items")
        items = [(_key(pairs[i]), _value(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        too_big = [k for k, v in items if len(v) > self.store.max_item]
        if too_big:  # all or nothing, so the client can report the offending key without a partial write
            raise TooLarge(f"item {too_big[0][:60]!r} is above the max item size {self.store.max_item}")
        for key, value in items:
            self.store.set(key, value, ttl)
        return _OK, b""

    def _flush_all(self, args: list[bytes]) -> tuple[Status, bytes]:
        self.store.flush_all()
        return _OK, b""

    def _stats(self, args: list[bytes]) -> tuple[Status, bytes]:
        out: list[bytes] = []
        for name, value in {**self.store.stats(), "malformed": self.malformed}.items():
            out += [name.encode(), b"%d" % value]
        return _OK, pack_list(out)

    def _lease_get(self, args: list[bytes]) -> tuple[Status, bytes]:
        value, token, wait = self.store.lease_get(_key(args[0]), read_u32(args[1], "lease ms") / 1000)
        if value is not None:
            return _OK, value
        return (Status.WAIT, b"") if wait else (Status.LEASED, u64(token))

    def _lease_set(self, args: list[bytes]) -> tuple[Status, bytes]:
        key, value = _key(args[0]), _value(args[1])
        return self._store(self.store.lease_set(key, value, read_u32(args[2], "ttl"), read_u64(args[3], "lease")))
