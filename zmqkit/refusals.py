"""Refused handshakes on serving CURVE sockets, counted by one monitor thread per process.

A refusal never reaches the application: libzmq drops the connection during the handshake. Its socket monitor
says so (HANDSHAKE_FAILED_AUTH: ZAP said no; HANDSHAKE_FAILED_PROTOCOL: the client has the wrong server key or
no CURVE). ZAP alone would miss the second kind, so the monitor is what counts. One daemon thread reads every
watched socket's monitor as events come, so a flood of refusals never fills a monitor's queue, and nothing is
added to the message path.

>>> refusals = Refusals()
>>> refusals.watch(sock)          # a CURVE server socket, in its own thread, before bind
>>> refusals.count                # read from any thread (e.g. a metrics scrape)
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .sockets import monitor_reader

__all__ = ["Refusals"]

log = logging.getLogger(__name__)

_REFUSED = {int(zmq.EVENT_HANDSHAKE_FAILED_AUTH), int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)}
_STOPPED = int(zmq.EVENT_MONITOR_STOPPED)
_EVENTS = sum(_REFUSED) | _STOPPED


class Refusals:
    """How many handshakes the sockets given to :meth:`watch` refused; ``count`` may be read from any thread."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0  # written only by the monitor thread

    def watch(self, sock: zmq.Socket) -> None:
        """Count ``sock``'s refusals too, if it is a CURVE server (others have none to count). Call it in the
        socket's thread, before bind; a socket has one monitor, so not on a socket something else monitors."""
        if sock.getsockopt(zmq.MECHANISM) != zmq.CURVE or not sock.getsockopt(zmq.CURVE_SERVER):
            return
        _WATCHER.add(sock, self)


class _Watcher:
    """The thread that reads the monitors: a wake-up PAIR tells it of new ones; MONITOR_STOPPED ends one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._new: list[tuple[zmq.Socket, Refusals]] = []
        self._wake: zmq.Socket | None = None

    def add(self, sock: zmq.Socket, refusals: Refusals) -> None:
        # Connected now, so no event is missed; it belongs to the thread from the moment it is handed over.
        reader = monitor_reader(sock, _EVENTS, "refusals")
        ctx = reader.context
        with self._lock:
            if self._pid != os.getpid():
                self._start(ctx)
            assert self._wake is not None
            self._new.append((reader, refusals))
            self._wake.send(b"")

    def _start(self, ctx: zmq.Context) -> None:
        # (after fork, the parent's thread and sockets are not ours: start afresh)
        address = f"inproc://zmqkit-refusals-wake-{os.getpid()}"
        inbox = ctx.socket(zmq.PAIR)
        inbox.linger = 0
        inbox.bind(address)
        self._wake = ctx.socket(zmq.PAIR)
        self._wake.linger = 0
        self._wake.sndhwm = 0  # never blocks: each message only says "look at the list"
        self._wake.connect(address)
        self._new = []
        self._pid = os.getpid()
        threading.Thread(target=self._run, args=(inbox,), name="zmqkit-refusals", daemon=True).start()

    def _run(self, inbox: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        readers: dict[Any, Refusals] = {}
        try:
            while True:
                for sock, _ in poller.poll():
                    if sock is inbox:
                        while inbox.poll(0):
                            inbox.recv()
                        with self._lock:
                            new, self._new = self._new, []
                        for reader, refusals in new:
                            readers[reader] = refusals
                            poller.register(reader, zmq.POLLIN)
                    else:
                        self._read(sock, readers, poller)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("the handshake refusal counter stopped")

    @staticmethod
    def _read(reader: zmq.Socket, readers: dict[Any, Refusals], poller: zmq.Poller) -> None:
        while True:
            try:
                event = parse_monitor_message(reader.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] in _REFUSED:
                readers[reader].count += 1
            elif event["event"] == _STOPPED:  # the watched socket closed
                poller.unregister(reader)
                del readers[reader]
                reader.close()
                return


_WATCHER = _Watcher()
