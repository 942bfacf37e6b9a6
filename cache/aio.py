"""The asyncio runner of the cache client core: ``zmqkit.asyncio.CacheClient``.

Every coroutine in flight shares one DEALER per node (pipelining): requests go out at once, a reader task per
node hands each reply to the call waiting for its request id.

>>> async with CacheClient(["tcp://127.0.0.1:11311"]) as cache:
...     await cache.set("user:42", {"name": "Ada"})
...     values = await asyncio.gather(*(cache.get(f"user:{i}") for i in range(100)))
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from types import TracebackType
from typing import Any, cast

import zmq
import zmq.asyncio

from zmqkit.sockets import connect, make_socket

from .actions import Batch, Call, Op, Reply, Sleep, advance, parse_reply
from .core import ClientCore
from .protocol import HEAD

__all__ = ["AsyncCacheClient"]

log = logging.getLogger(__name__)


def _expire(futures: list[asyncio.Future[Reply | None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


class AsyncCacheClient(ClientCore):
    """The cache client for asyncio: the same methods as :class:`zmqkit.cache.CacheClient`, as coroutines.

    Use it from one event loop; ``async with`` (or ``close()``) releases its sockets.
    """

    def __init__(self, endpoints: Any, **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self._socks: list[zmq.asyncio.Socket] = []
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[bytes, asyncio.Future[Reply | None]] = {}
        self._queued: dict[int, list[tuple[Call, asyncio.Future[Reply | None]]]] = {}
        self._blocked: list[asyncio.Future[Any]] = []  # sends waiting for a node to connect
        self._closed = False

    def __repr__(self) -> str:
        return f"<asyncio CacheClient {len(self.endpoints)} nodes replicas={self.replicas}>"

    def _open(self) -> list[zmq.asyncio.Socket]:
        if self._closed:
            raise RuntimeError("CacheClient is closed")
        try:
            for endpoint in self.endpoints:
                sock = make_socket("dealer", self.options, asyncio=True)
                self._socks.append(sock)
                connect(sock, endpoint)
        except BaseException:
            self.close()
            raise
        loop = asyncio.get_running_loop()
        self._readers = [loop.create_task(self._read(sock)) for sock in self._socks]
        return self._socks

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        pending = self._pending
        while True:
            frames = await sock.recv_multipart()
            parsed = parse_reply(frames)
            if parsed is not None:
                fut = pending.pop(parsed[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(parsed[1])

    async def _run(self, op: Op) -> Any:
        value: Any = None
        error: Exception | None = None
        while True:
            done, action = advance(op, value, error)
            if done:
                return action
            value, error = None, None
            if type(action) is Batch:
                lone = self._queue_get(action)
                if lone is None:
                    value = await self._io(action)
                else:  # awaited here, not in one more coroutine: the commonest call stays cheap
                    reply = await lone
                    value = {} if reply is None else {action.calls[0].rid: reply}
            elif type(action) is Sleep:
                await asyncio.sleep(action.seconds)
            else:  # Compute: the memoized function, sync or async
                value, error = action.run()
                if inspect.isawaitable(value):
                    try:
                        value = await value
                    except Exception as exc:
                        value, error = None, exc

    def _send(self, call: Call, blocked: list[asyncio.Future[Any]]) -> None:
        sock = self._socks[call.node]
        sent = cast("asyncio.Future[Any]", sock.send_multipart(call.frames, flags=zmq.NOBLOCK))
        if not sent.done():  # queued behind an earlier blocked send
            blocked.append(sent)
        elif sent.exception() is not None:  # not connected (yet, or any more): wait, until the call times out
            blocked.append(asyncio.ensure_future(sock.send_multipart(call.frames)))

    def _flush_gets(self) -> None:
        """Send the gets queued in this loop iteration: one get_many per node (auto-pipelining)."""
        queued, self._queued = self._queued, {}
        loop = asyncio.get_running_loop()
        for node, entries in queued.items():
            futures = [fut for _, fut in entries]
            if len(entries) == 1:
                call, target = entries[0][0], futures[0]
            else:
                call, target = self.merge_gets(node, [c for c, _ in entries]), loop.create_future()
                target.add_done_callback(functools.partial(self._split, futures))
            self._pending[call.rid] = target
            # One timer for the whole group: every get in it has the client's timeout (lone gets only).
            timer = loop.call_later(self.timeout, self._expire, call.rid, target, futures)
            target.add_done_callback(lambda _f, t=timer: t.cancel())  # type: ignore[misc]
            self._send(call, self._blocked)

    def _expire(
        self, rid: bytes, target: asyncio.Future[Reply | None], futures: list[asyncio.Future[Reply | None]]
    ) -> None:
        self._pending.pop(rid, None)
        _expire([target, *futures])

    def _split(self, futures: list[asyncio.Future[Reply | None]], merged: asyncio.Future[Reply | None]) -> None:
        replies = self.unmerge_gets(None if merged.cancelled() else merged.result(), len(futures))
        for fut, reply in zip(futures, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)

    def _queue_get(self, batch: Batch) -> asyncio.Future[Reply | None] | None:
        """A lone get waits for the end of this loop iteration, to travel with the other gets to its node in one
        get_many; its future, or None if ``batch`` is not a lone get."""
        calls = batch.calls
        first = calls[0]
        if len(calls) != 1 or batch.timeout != self.timeout or first.frames[1][HEAD:] != b"get":
            return None
        if not self._socks:
            self._open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply | None] = loop.create_future()
        queued = self._queued
        if not queued:
            loop.call_soon(self._flush_gets)
        entries = queued.get(first.node)
        if entries is None:
            queued[first.node] = [(first, fut)]
        else:
            entries.append((first, fut))
        return fut

    async def _io(self, batch: Batch) -> dict[bytes, Reply]:
        if not self._socks:
            self._open()
        loop = asyncio.get_running_loop()
        calls = batch.calls
        pending = self._pending
        futures: list[asyncio.Future[Reply | None]] = [loop.create_future() for _ in calls]
        for call, fut in zip(calls, futures, strict=True):
            pending[call.rid] = fut
            self._send(call, self._blocked)
        timer = loop.call_later(batch.timeout, _expire, futures)
        try:
            replies = {}
            for call, fut in zip(calls, futures, strict=True):
                reply = await fut
                if reply is not None:
                    replies[call.rid] = reply
            return replies
        finally:
            timer.cancel()
            for call in calls:
                pending.pop(call.rid, None)
            if self._blocked:
                self._blocked = [f for f in self._blocked if not f.done()]

    def close(self) -> None:
        """Stop the reader tasks and close the sockets; the client cannot be used afterwards."""
        self._closed = True
        for task in self._readers:
            task.cancel()
        for sock in self._socks:
            sock.close(linger=0)
        self._socks = []  # a later call raises "closed" instead of using a closed socket
        for send in self._blocked:
            send.cancel()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(None)
        self._pending.clear()

    async def __aenter__(self) -> AsyncCacheClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)

    def __enter__(self) -> AsyncCacheClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
