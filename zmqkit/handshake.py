"""Handshake watch: which endpoints refused a connecting socket's handshake, from libzmq's socket monitor.

A refused CURVE handshake (not allowed by ZAP, wrong server key, one side without CURVE) looks like a dead peer
to a socket: nothing connects. The monitor says why. A client makes a watch with each connecting socket (before
connect), and asks it only where it would give up on a peer, so a healthy round trip never pays for it.

>>> watch = HandshakeWatch(sock)     # right after make_socket, before connect
>>> connect(sock, "tcp://10.0.0.1:5555")
>>> watch.reason("tcp://10.0.0.1:5555")   # None, or e.g. "not allowed (ZAP status 400)"
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .errors import AuthenticationFailed
from .sockets import monitor_reader, track_socket

__all__ = ["HandshakeWatch", "refusal", "wait_writable"]

log = logging.getLogger(__name__)

_FAILED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL),
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL),
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH),
}
_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_NO_DETAIL = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_EVENTS = _SUCCEEDED | sum(_FAILED)
_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
_ZAP_STATUS = {300: "temporary ZAP failure", 400: "not allowed", 500: "ZAP internal error"}


class HandshakeWatch:
    """The last handshake outcome of each endpoint ``sock`` connects to; make it before connecting, use it and
    close it in the socket's thread, and close it before the socket.

    With ``connections``, it also follows which endpoints are connected now (:attr:`connected`) and calls
    ``on_event(event, endpoint)`` after each event it reads; a thread that wants each change as it happens
    polls :attr:`socket` and hands each message to :meth:`take`.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        *,
        connections: bool = False,
        on_event: Callable[[int, str], None] | None = None,
    ) -> None:
        self._curve = int(sock.getsockopt(zmq.MECHANISM)) == int(zmq.CURVE)
        self._monitored = sock
        # Only ever read without blocking, whenever a peer is silent.
        self.socket = monitor_reader(sock, _EVENTS | (_DISCONNECTED if connections else 0), "handshake")
        track_socket(self.socket)
        self._refused: dict[str, str] = {}
        self._unsure: set[str] = set()  # refused endpoints whose refusal may also be a port that is not ZeroMQ
        self._warned: set[str] = set()
        self.connected: set[str] = set()  # endpoints whose handshake succeeded, not disconnected since
        self._on_event = on_event

    def take(self, frames: list[bytes]) -> None:
        """Apply one message read from :attr:`socket` (and pass it to ``on_event``)."""
        event: dict[str, Any] = dict(parse_monitor_message(frames))
        endpoint = event["endpoint"].decode(errors="replace")
        kind = int(event["event"])
        if kind == _SUCCEEDED:
            self._refused.pop(endpoint, None)
            self._unsure.discard(endpoint)
            self.connected.add(endpoint)
        elif kind == _DISCONNECTED:
            self.connected.discard(endpoint)
        elif kind in _FAILED:
            self._refused[endpoint] = self._why(kind, int(event["value"]))
            # Without CURVE, a peer that just hangs up is a CURVE server refusing us, or no ZeroMQ server at all
            # (libzmq reports both the same way, with the same errno): the error says both.
            if not self._curve and kind == _NO_DETAIL:
                self._unsure.add(endpoint)
            else:
                self._unsure.discard(endpoint)
        if self._on_event is not None:
            self._on_event(kind, endpoint)

    def refused(self) -> dict[str, str]:
        """``{endpoint: reason}`` for each endpoint whose last handshake failed (reads what the monitor said)."""
        if self.socket.closed:
            return self._refused
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self._refused
            self.take(frames)

    def reason(self, endpoint: str) -> str | None:
        """Why ``endpoint`` refused the handshake, or None if it did not (or has not yet)."""
        return self.refused().get(endpoint)

    def warn_new(self, what: str) -> None:
        """Log a WARNING once per endpoint that refused ``what``'s handshake (for sides with no call to fail)."""
        for endpoint, reason in self.refused().items():
            if endpoint not in self._warned:
                self._warned.add(endpoint)
                log.warning("%s: %s", what, self.error(endpoint, reason))

    def error(self, endpoint: str, reason: str) -> AuthenticationFailed:
        """The error for ``endpoint``'s refusal, ``reason`` as :meth:`refused` gave it."""
        return AuthenticationFailed(endpoint, reason, unsure=endpoint in self._unsure)

    @property
    def unsure(self) -> frozenset[str]:
        """The refused endpoints that may instead not be ZeroMQ servers (see :class:`AuthenticationFailed`)."""
        return frozenset(self._unsure)

    def _why(self, event: int, value: int) -> str:
        if event == int(zmq.EVENT_HANDSHAKE_FAILED_AUTH):
            return f"{_ZAP_STATUS.get(value, 'refused')} (ZAP status {value})"
        if event == int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            if value == _MISMATCH:
                if self._curve:
                    return "the peer does not use CURVE (security mechanism mismatch)"
                return "the peer requires CURVE and this side has no keys (security mechanism mismatch)"
            return f"protocol error {value:#x} during the handshake"
        if self._curve:
            return "the peer could not read our CURVE hello (wrong server public key?)"
        return f"errno {value}"

    def close(self, linger: int = 0) -> None:
        """Stop the monitor, then close its reader. Close the watch before the socket it watches: an event
        sent after the reader is gone (a handshake that ends while the socket is being closed) would block
        libzmq's I/O thread for ever on a PAIR with no peer."""
        if not self._monitored.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._monitored.disable_monitor()
        self.socket.close(linger=0)


def refusal(watches: Iterable[HandshakeWatch], *, every: bool = False) -> AuthenticationFailed | None:
    """An AuthenticationFailed for the first endpoint among ``watches`` that refused us; with ``every``, only if
    each watch saw a refusal (so a client with another server to try does not give up early)."""
    first: AuthenticationFailed | None = None
    for watch in watches:
        seen = watch.refused()
        if every and not seen:
            return None
        if first is None and seen:
            endpoint, reason = next(iter(seen.items()))
            first = watch.error(endpoint, reason)
    return first


def wait_writable(sock: zmq.Socket, watch: HandshakeWatch, timeout_ms: int) -> bool:
    """Wait up to ``timeout_ms`` for ``sock`` (not connected yet) to take a message: False on the timeout or as
    soon as ``watch`` sees its handshake refused (ask the watch why)."""
    if watch.refused():  # (libzmq does not try again after a ZAP refusal: no event would come)
        return False
    deadline = time.monotonic() + timeout_ms / 1000
    items = [(sock, zmq.POLLOUT), (watch.socket, zmq.POLLIN)]
    while True:
        ready = dict(zmq.zmq_poll(items, max(0, int((deadline - time.monotonic()) * 1000)) + 1))
        if ready.get(sock):
            return True
        if not ready or watch.refused() or time.monotonic() >= deadline:
            return False
