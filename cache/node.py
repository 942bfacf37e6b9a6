"""CacheNode: a Store served on a REP socket, in the calling thread (``serve``) or a background one (``start``).

>>> with CacheNode("tcp://127.0.0.1:0", memory="64M") as node:
...     node.start()                      # background thread; node.endpoint is where it listens
...     client = CacheClient([node.endpoint])

With ``announce="cache"`` (and ``fabric=``), the node announces itself on the discovery fabric while it serves,
so ``CacheClient(service="cache")`` finds it: maintenance on :meth:`leave` and first thing in :meth:`stop`, down
when it is gone.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import zmq

from zmqkit.checks import check_timeout
from zmqkit.endpoints import parse_endpoint
from zmqkit.errors import Closed, ConfigurationError, RequestTimeout
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import (
    SocketOptions,
    bind,
    connect,
    make_socket,
    recv_frame,
    recv_frames,
    resolve_options,
    send_frame,
)

from .protocol import GET_OPCODE, HEAD, HEADER, OK_BYTE
from .service import Service
from .store import Store

if TYPE_CHECKING:
    from zmqkit.patterns.presence.fabric import Announcer, FabricLike

__all__ = ["CacheNode"]

log = logging.getLogger(__name__)
_ids = itertools.count()


class CacheNode:
    """A cache node: one byte-bounded LRU store answering ZKC requests on a REP socket.

    ``memory`` and ``max_item`` take bytes or ``"64M"``-style sizes. ``stop()`` ends ``serve()`` from any
    thread (or a signal handler, when the node announces nothing); the serving thread owns the socket; stop()
    asks it over an in-process endpoint. With ``announce=``, see the module docstring.
    """

    def __init__(
        self,
        bind: str = "tcp://127.0.0.1:0",
        *,
        memory: int | str = "64M",
        max_item: int | str = "1M",
        clock: Callable[[], float] = time.monotonic,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        announce: str | None = None,
        fabric: FabricLike = None,
        advertise: str | None = None,
    ) -> None:
        """``announce``: the service name to announce on ``fabric`` (a Fabric, its addresses, or None for
        $ZMQKIT_FABRIC) once bound; ``advertise``: the endpoint to announce when not the bound one."""
        if announce is not None:
            _check_announce(announce, fabric, advertise)
        elif advertise is not None:
            raise ConfigurationError(f"advertise={advertise!r} needs announce= (a service name)")
        self._announce = announce
        self._fabric = fabric
        self._advertise = advertise
        self._announcer: Announcer | None = None
        self.store = Store(memory, max_item, clock=clock)
        self.service = Service(self.store)
        self.options = resolve_options(options, curve)
        self._refusals = Refusals()
        self._bind = bind
        self._control = f"inproc://zmqkit-cache-node-{next(_ids)}"
        self._stop_token = b"zmqkit-stop:" + os.urandom(16)
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.endpoint: str | None = None

    def __repr__(self) -> str:
        return f"<CacheNode {self.endpoint or self._bind} items={len(self.store)}>"

    def stats(self) -> dict[str, int]:
        """The store's counters and refused CURVE handshakes, safe to read from any thread while the node serves
        (for metrics)."""
        return {**self.store.counters(), "auth_failures": self._refusals.count}

    def start(self, timeout: float | None = 5.0) -> str:
        """Serve in a background thread; return the bound endpoint once it listens (``timeout=None``: no limit)."""
        check_timeout(timeout)
        if self._stopped:
            raise Closed(f"cache node {self.endpoint or self._bind} is stopped; make a new CacheNode")
        if self._thread is not None:
            raise ConfigurationError(f"cache node {self.endpoint or self._bind} already started")
        self._thread = threading.Thread(target=self._serve_quietly, name=f"zmqkit-{self._control[9:]}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RequestTimeout(f"cache node did not bind {self._bind!r} within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self.endpoint is not None
        return self.endpoint

    def _serve_quietly(self) -> None:
        try:
            self.serve()
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()

    def serve(self, ready: Callable[[str], None] | None = None, *, timeout: float | None = None) -> None:
        """Answer requests in this thread until :meth:`stop` (or ``timeout`` seconds); ``ready(endpoint)`` is
        called once bound."""
        rep = make_socket("rep", self.options)
        try:
            self._refusals.watch(rep)
            self.endpoint = bind(rep, self._bind)
            self.service.peer = f"a client of {self.endpoint}"
            bind(rep, self._control)  # stop() asks on this in-process endpoint, so the loop needs no poll
            if self._announce is not None:
                self._announcer = _announcer(self._announce, self._fabric, self.endpoint, self._advertise)
            self._ready.set()
            if ready is not None:
                ready(self.endpoint)
            if not self._stopped:
                self._loop(rep, None if timeout is None else time.monotonic() + timeout)
        finally:
            rep.close(linger=0)
            if self._announcer is not None:
                self._announcer.close()  # down: gone
            self._done.set()

    def _loop(self, rep: zmq.Socket, deadline: float | None) -> None:
        handle, hit, token = self.service.handle, self.store.hit, self._stop_token
        items = [(rep, zmq.POLLIN)]
        while True:
            if deadline is not None:  # only a bounded serve() polls; the usual one blocks in recv
                wait_ms = int((deadline - time.monotonic()) * 1000)
                if wait_ms <= 0 or not zmq.zmq_poll(items, wait_ms):
                    return
            frame = recv_frame(rep)
            try:
                # The hottest request, a get that hits, is answered here with one Python call (Store.hit) where
                # Service.handle makes several: on this path each one costs a round trip about 1 %. Anything
                # else, a miss or a bad key included, goes to handle.
                if frame[HEAD : HEAD + 1] == GET_OPCODE and frame.startswith(HEADER):
                    value = hit(frame[HEAD + 1 :])
                    if value is not None:
                        send_frame(rep, frame[:HEAD] + OK_BYTE + value)
                        continue
                elif frame == token:  # stop(): a random token only this process knows
                    send_frame(rep, token)
                    return
                send_frame(rep, handle(frame))
            except zmq.ZMQError as exc:
                # EFSM: the request had more frames, and a REP answers only once it has read them all. Reading
                # RCVMORE on every request would cost more than the whole request (pyzmq maps each option
                # through an enum), so a message longer than one frame is found out here, and refused.
                if exc.errno != zmq.EFSM:
                    raise
                send_frame(rep, self.service.refuse([frame, *recv_frames(rep)]))

    @property
    def announced(self) -> list[str]:
        """The endpoints announced on the fabric (empty without ``announce=``, or before the bind)."""
        return list(self._announcer.endpoints) if self._announcer is not None else []

    def leave(self) -> None:
        """Announce maintenance: clients stop placing keys here (what it holds is read elsewhere); the node
        serves on until :meth:`stop`."""
        if self._announcer is not None:
            self._announcer.maintenance()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Make ``serve()`` return (callable from any thread); wait for it when threaded, up to ``timeout``
        seconds (None: no limit). An announced node says maintenance first, and down once it has stopped."""
        check_timeout(timeout)
        self.leave()
        with self._lock:
            if self._stopped or not self._ready.is_set() or self._error is not None or self._done.is_set():
                self._stopped = True
                return
            self._stopped = True
            # A DEALER does not wait for the answer: a signal handler in the serving thread can call this.
            waker = make_socket("dealer")
            try:
                connect(waker, self._control)
                waker.send_multipart([b"", self._stop_token])
            finally:
                waker.close()  # default linger: the stop request is delivered before the socket goes
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RequestTimeout(f"cache node {self.endpoint} did not stop within {timeout}s")

    close = stop

    def __enter__(self) -> CacheNode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_announce(service: str, fabric: FabricLike, advertise: str | None) -> None:
    """Bad announce arguments fail at construction, not in the serving thread."""
    from zmqkit.patterns.presence.fabric import Fabric, fabric_endpoints
    from zmqkit.patterns.presence.protocol import check_announcement

    check_announcement(service, "", "up", None)
    if not isinstance(fabric, Fabric):
        fabric_endpoints(fabric)
    if advertise is not None:
        parse_endpoint(advertise)


def _announcer(service: str, fabric: FabricLike, endpoint: str, advertise: str | None) -> Announcer:
    from zmqkit.patterns.presence.fabric import Announcer

    return Announcer(fabric, service, [endpoint], meta={"kind": "cache"}, advertise=advertise)
