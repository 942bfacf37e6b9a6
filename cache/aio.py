"""The asyncio runner of the cache client core: ``zmqkit.asyncio.CacheClient``.

Every call in flight shares one DEALER per node (pipelining): requests go out at once, a reader task per
node hands each reply to the call waiting for its request id. Commands run their generator from ``core.py``;
a plain ``get()`` (the hot path) skips it while all goes well: it returns a Future, and the gets of one loop
iteration go to each node as one get_many; any outcome but a hit or a miss resumes ``_get`` with that reply.

>>> async with CacheClient(["tcp://127.0.0.1:11311"]) as cache:
...     await cache.set("user:42", {"name": "Ada"})
...     values = await asyncio.gather(*(cache.get(f"user:{i}") for i in range(100)))
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import zmq
import zmq.asyncio

from zmqkit.sockets import connect, make_socket

from .actions import Batch, Call, Op, Reply, Sleep, advance, first_reply, parse_dealer_reply
from .core import RESUME, ClientCore
from .protocol import COMMANDS, HEAD

__all__ = ["AsyncCacheClient"]

log = logging.getLogger(__name__)

_GET = COMMANDS[b"get"][0]  # the opcode


Settle = Callable[["Reply | None"], None]  # hands one request's reply (None: no answer) to whoever waits


def _expire(futures: list[asyncio.Future[Reply | None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


def _set_reply(fut: asyncio.Future[Reply | None], reply: Reply | None) -> None:
    if not fut.done():
        fut.set_result(reply)


def _cancel_then(timer: asyncio.TimerHandle, settle: Settle, reply: Reply | None) -> None:
    timer.cancel()
    settle(reply)


def _chain(target: asyncio.Future[Any], task: asyncio.Future[Any]) -> None:
    """Copy ``task``'s outcome to ``target`` (the future a caller awaits)."""
    if target.done():
        return
    if task.cancelled():
        target.cancel()
    elif task.exception() is not None:
        target.set_exception(cast(BaseException, task.exception()))
    else:
        target.set_result(task.result())


class AsyncCacheClient(ClientCore):
    """The cache client for asyncio: the same methods as :class:`zmqkit.cache.CacheClient`, returning awaitables.

    ``get()`` returns a Future (as pyzmq's asyncio sockets do), so ``gather`` over many gets makes no Task per
    get; the other commands are coroutines. Use it from one event loop; ``async with`` (or ``close()``)
    releases its sockets.
    """

    def __init__(self, endpoints: Any, **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self._socks: list[zmq.asyncio.Socket] = []
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[bytes, Settle] = {}
        self._queued: dict[int, list[tuple[bytes, Settle]]] = {}  # gets to send at the end of this iteration
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
            parsed = parse_dealer_reply(frames)
            if parsed is not None:
                settle = pending.pop(parsed[0], None)
                if settle is not None:
                    settle(parsed[1])

    # -- the fast get: no generator, no Task ----------------------------------------------------------------

    def get(self, key: Any, default: Any = None, *, timeout: float | None = None) -> Any:
        """An awaitable of the value of ``key``, or ``default`` on a miss."""
        target = self.fast_node(key, timeout)
        if target is None:
            return self._run(self._get(key, default, timeout))
        k, node = target
        if not self._socks:
            self._open()
        fut = asyncio.get_running_loop().create_future()
        self._enqueue(node, k, functools.partial(self._settle_get, fut, node, key, default))
        return fut

    def _settle_get(self, fut: asyncio.Future[Any], node: int, key: Any, default: Any, reply: Reply | None) -> None:
        """Resolve a fast get, or hand its reply to ``_get`` (see ``fast_get_result``)."""
        if fut.done():  # cancelled by its caller
            return
        try:
            value = self.fast_get_result(node, reply, default)
        except Exception as exc:
            fut.set_exception(exc)
            return
        if value is not RESUME:
            fut.set_result(value)
            return
        if self._closed:  # what the generator would find out on its retry
            fut.set_exception(RuntimeError("CacheClient is closed"))
            return
        task = asyncio.ensure_future(self._run(self._get(key, default, None), (node, reply)))
        task.add_done_callback(functools.partial(_chain, fut))
        fut.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)

    def _enqueue(self, node: int, key: bytes, settle: Settle) -> None:
        """Queue a get of ``key`` to ``node`` till the end of this loop iteration, to travel with the other gets
        to that node in one get_many (auto-pipelining)."""
        queued = self._queued
        if not queued:
            asyncio.get_running_loop().call_soon(self._flush_gets)
        entries = queued.get(node)
        if entries is None:
            queued[node] = [(key, settle)]
        else:
            entries.append((key, settle))

    def _flush_gets(self) -> None:
        """Send the gets queued in this loop iteration: one get_many per node."""
        queued, self._queued = self._queued, {}
        loop = asyncio.get_running_loop()
        for node, entries in queued.items():
            call = self.merge_gets(node, [key for key, _ in entries])
            settle = entries[0][1] if len(entries) == 1 else functools.partial(self._split, [s for _, s in entries])
            # One timer for the whole group: every get in it has the client's timeout.
            timer = loop.call_later(self.timeout, self._expire_call, call.rid)
            self._pending[call.rid] = functools.partial(_cancel_then, timer, settle)
            self._send(call, self._blocked)

    def _expire_call(self, rid: bytes) -> None:
        settle = self._pending.pop(rid, None)
        if settle is not None:
            settle(None)

    def _split(self, settles: list[Settle], reply: Reply | None) -> None:
        for settle, own in zip(settles, self.unmerge_gets(reply, len(settles)), strict=True):
            settle(own)

    # -- every other command: its generator, run here --------------------------------------------------------

    async def _run(self, op: Op, first: tuple[int, Reply | None] | None = None) -> Any:
        """Drive ``op``; ``first`` = (node, reply) answers its first request if that goes to ``node`` (a fast
        get handing over)."""
        value: Any = None
        error: Exception | None = None
        while True:
            done, action = advance(op, value, error)
            if done:
                return action
            value, error = None, None
            if type(action) is Batch:
                value, first = first_reply(action, first), None
                if value is None and self._lone_get(action):
                    fut: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
                    call = action.calls[0]
                    self._enqueue(call.node, call.frame[HEAD + 1 :], functools.partial(_set_reply, fut))
                    reply = await fut  # awaited here, not in one more coroutine
                    value = {} if reply is None else {call.rid: reply}
                elif value is None:
                    value = await self._io(action)
            elif type(action) is Sleep:
                await asyncio.sleep(action.seconds)
            else:  # Compute: the memoized function, sync or async
                value, error = action.run()
                if inspect.isawaitable(value):
                    try:
                        value = await value
                    except Exception as exc:
                        value, error = None, exc

    def _lone_get(self, batch: Batch) -> bool:
        """Whether ``batch`` is one plain get with the client's timeout (so it may join the coalesced gets)."""
        calls = batch.calls
        if len(calls) != 1 or batch.timeout != self.timeout or calls[0].frame[HEAD] != _GET:
            return False
        if not self._socks:
            self._open()
        return True

    def _send(self, call: Call, blocked: list[asyncio.Future[Any]]) -> None:
        sock = self._socks[call.node]
        frames = [b"", call.frame]
        sent = cast("asyncio.Future[Any]", sock.send_multipart(frames, flags=zmq.NOBLOCK))
        if not sent.done():  # queued behind an earlier blocked send
            blocked.append(sent)
        elif sent.exception() is not None:  # not connected (yet, or any more): wait, until the call times out
            blocked.append(asyncio.ensure_future(sock.send_multipart(frames)))

    async def _io(self, batch: Batch) -> dict[bytes, Reply]:
        if not self._socks:
            self._open()
        loop = asyncio.get_running_loop()
        calls = batch.calls
        pending = self._pending
        futures: list[asyncio.Future[Reply | None]] = [loop.create_future() for _ in calls]
        for call, fut in zip(calls, futures, strict=True):
            pending[call.rid] = functools.partial(_set_reply, fut)
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
        pending, self._pending = self._pending, {}
        queued, self._queued = self._queued, {}
        for settle in [*pending.values(), *(s for entries in queued.values() for _, s in entries)]:
            settle(None)

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
