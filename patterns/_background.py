"""A background thread that owns some sockets, polls them, and takes commands over an inproc PAIR.

The thread closes its sockets when it ends, so they never cross threads while in use. The caller keeps the
other end of the PAIR (guarded by a lock, so any of the caller's threads may send a command).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

import zmq

from zmqkit.sockets import bind, connect, make_socket

__all__ = ["Background", "ProxyCounters"]

log = logging.getLogger(__name__)

# libzmq's steerable proxy stops on the same word, so one stop works for both kinds of thread.
_STOP = b"TERMINATE"
Handler = Callable[[list[bytes]], None]


class Background:
    """Run ``handlers[sock](frames)`` for each message on each socket, in a thread, until :meth:`stop`.

    ``on_command(frames)`` gets what :meth:`command` sends; ``tick()`` runs after every wake-up and returns
    how many seconds the thread may sleep (None: until a message arrives). ``on_stop()`` runs last, in the thread.
    ``run(control)`` replaces the poll loop (e.g. ``zmq.proxy_steerable``); ``owned`` objects (sockets, handshake
    watches) are closed at the end, before the handled sockets.
    A handled "socket" may also be any object with ``fileno()``, ``recv_multipart(flags)`` (raising zmq.Again
    when empty) and ``close(linger)``, such as a UDP socket.
    """

    def __init__(
        self,
        name: str,
        handlers: dict[Any, Handler],
        *,
        on_command: Handler | None = None,
        tick: Callable[[], float | None] | None = None,
        on_stop: Callable[[], None] | None = None,
        run: Callable[[Any], None] | None = None,
        owned: tuple[Any, ...] = (),
        linger_ms: int = 0,
    ) -> None:
        address = f"inproc://zmqkit-{name}-{os.getpid()}-{os.urandom(6).hex()}"
        self._control = make_socket("pair")
        bind(self._control, address)
        self._peer = make_socket("pair")
        connect(self._peer, address)
        self._handlers = handlers
        self._on_command = on_command
        self._tick = tick
        self._on_stop = on_stop
        self._owned = (*owned, *handlers)  # owned first: a socket's monitor watch closes before the socket
        self._thread_body = run
        self._linger_ms = linger_ms
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"zmqkit-{name}", daemon=True)
        self._thread.start()

    def command(self, *frames: bytes) -> None:
        """Send a command to the thread (it runs ``on_command`` there)."""
        with self._lock:
            if not self._control.closed:
                self._control.send_multipart(list(frames))

    def ask(self, frame: bytes, timeout: float = 1.0) -> list[bytes] | None:
        """Send ``frame`` to a ``run`` body that answers on its control socket (libzmq's steerable proxy answers
        STATISTICS) and return the answer; None when the thread has ended or did not answer within ``timeout``."""
        with self._lock:
            if self._control.closed or not self._thread.is_alive():
                return None
            while self._control.poll(0):  # a late answer to an earlier ask that gave up
                self._control.recv_multipart()
            try:
                self._control.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                return None
            if not self._control.poll(int(timeout * 1000)):
                return None
            return self._control.recv_multipart()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish and wait for it (it closes the sockets it owns)."""
        with self._lock:
            if self._control.closed:
                return
            with contextlib.suppress(zmq.Again):  # no peer: the thread has ended already
                self._control.send(_STOP, zmq.NOBLOCK)
        self._thread.join(timeout)
        with self._lock:
            self._control.close(linger=0)
        if self._thread.is_alive():
            log.warning("background thread %s did not stop within %ss", self._thread.name, timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            if self._thread_body is not None:
                self._thread_body(self._peer)
            else:
                self._loop()
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("background thread %s failed", threading.current_thread().name)
        finally:
            for sock in self._owned:
                sock.close(linger=self._linger_ms)
            self._peer.close(linger=0)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._peer, zmq.POLLIN)
        # The poller names a zmq socket by itself and anything else (a UDP socket) by its file descriptor.
        watched = [
            (sock, sock if isinstance(sock, zmq.Socket) else sock.fileno(), handler)
            for sock, handler in self._handlers.items()
        ]
        for sock in self._handlers:
            poller.register(sock, zmq.POLLIN)
        wait = self._tick() if self._tick is not None else None
        while True:
            ready = dict(poller.poll(None if wait is None else max(0, int(wait * 1000))))
            if self._peer in ready:
                frames = self._peer.recv_multipart()
                if frames == [_STOP]:
                    break
                if self._on_command is not None:
                    self._guard(self._on_command, frames)
            for sock, key, handler in watched:
                if key in ready:
                    self._drain(sock, handler)
            if self._tick is not None:
                wait = self._tick()
        if self._on_stop is not None:
            self._on_stop()

    def _drain(self, sock: Any, handler: Handler) -> None:
        # Take everything queued now (bounded, so commands are not starved by a flood).
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._guard(handler, frames)

    @staticmethod
    def _guard(handler: Handler, frames: list[bytes]) -> None:
        try:
            handler(frames)
        except Exception:
            log.exception("handler %r failed on a message; carrying on", handler)


class ProxyCounters:
    """libzmq's counters of a steerable proxy run by a :class:`Background` (the STATISTICS command, libzmq >= 4.3),
    asked when read; the last answer is kept, so they still read after the proxy stopped.

    Eight numbers: frontend frames in, bytes in, frames out, bytes out, then the same for the backend. libzmq
    counts frames (message parts), not messages, and nothing per peer.
    """

    def __init__(self) -> None:
        self.last: tuple[int, ...] = (0,) * 8

    def read(self, background: Background | None) -> tuple[int, ...]:
        reply = background.ask(b"STATISTICS") if background is not None else None
        if reply is not None and len(reply) == 8 and all(len(frame) == 8 for frame in reply):
            self.last = tuple(struct.unpack("=Q", frame)[0] for frame in reply)  # libzmq sends them native-endian
        return self.last
