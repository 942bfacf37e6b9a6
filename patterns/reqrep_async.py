"""The asyncio request-reply client: many requests in flight on one socket, matched to replies by request id.

Exported as ``zmqkit.asyncio.Client``. It shares everything but the waiting with the sync Client
(:class:`reqrep.ClientCore`); one pump task reads replies and runs the protocol's timers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import zmq

from zmqkit.errors import Unavailable

from .reqrep import ClientCore

__all__ = ["AsyncClient"]

log = logging.getLogger(__name__)


class AsyncClient(ClientCore):
    """``await client.request(body)`` with any number of requests in flight at once.

    >>> async with AsyncClient(["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"]) as client:
    ...     replies = await asyncio.gather(*(client.request(b"job %d" % i) for i in range(100)))
    """

    def __init__(self, endpoints: Any, **kwargs: Any) -> None:
        super().__init__(endpoints, asyncio=True, **kwargs)
        self._futures: dict[bytes, asyncio.Future[Any]] = {}
        self._pump_task: asyncio.Task[None] | None = None
        self._poll: asyncio.Future[Any] | None = None
        self._wake_at = math.inf

    async def request(self, body: Any, timeout: float | None = None) -> Any:
        """Send ``body``; return the reply, or raise RequestTimeout, RemoteError or Unavailable."""
        rid = self._submit(body, timeout)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        self._settle()
        if self._pump_task is None:
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        elif self._proto.next_deadline() < self._wake_at and self._poll is not None:
            self._poll.cancel()  # the pump sleeps past this request's first timer: wake it
        try:
            return await fut
        finally:
            if not fut.done():
                self._futures.pop(rid, None)
                self._proto.cancel(rid)

    def _settle(self) -> None:
        """Read what arrived and send what that produced, until the socket has nothing for us.

        Using the socket directly consumes the edge-triggered wake-up that the pump's asyncio poll waits for;
        leaving nothing unread means the next arrival wakes it again.
        """
        proto = self._proto
        self._drain()
        while proto.outbox:
            self._flush()
            self._drain()
        if proto.completed:
            self._deliver()

    def _deliver(self) -> None:
        futures = self._futures
        for rid, (ok, value) in self._proto.completed:
            fut = futures.pop(rid, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        self._proto.completed.clear()

    async def _pump(self) -> None:
        """Read replies and run timers until closed; if it breaks, every waiting caller hears why."""
        try:
            await self._pump_forever()
        except Exception as exc:
            log.exception("request-reply client for %r stopped reading", self.endpoints)
            self._proto.fail_all(Unavailable(f"client for {self.endpoints!r} stopped: {exc}"))
            self._deliver()
            self._pump_task = None

    async def _pump_forever(self) -> None:
        proto = self._proto
        clock = proto.clock
        while True:
            now = clock()
            due = proto.next_deadline()
            if due <= now:
                proto.tick()
            else:
                self._wake_at = due
                self._poll = self._socket.poll(min(3_600_000, math.ceil((due - now) * 1000)), zmq.POLLIN)
                # asyncio.wait does not raise when a request cancels the poll to wake us early.
                await asyncio.wait((self._poll,))
                self._poll = None
                self._wake_at = math.inf
            self._settle()

    def close(self) -> None:
        """Fail what is in flight with Unavailable, stop the pump and close the socket."""
        if self.closed:
            return
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None
        if self._poll is not None:
            self._poll.cancel()
        self._proto.fail_all(Unavailable(f"client for {self.endpoints!r} was closed"))
        self._deliver()
        self._close_socket()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
