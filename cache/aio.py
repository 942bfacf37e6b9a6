"""The asyncio runner of the cache client core: ``zmqkit.asyncio.CacheClient``.

Every call in flight shares one DEALER per node (pipelining): requests go out at once; the event loop watches
each socket's file descriptor, and what arrives is handed to the call waiting for its request id. Commands run
their generator from ``core.py``; a plain ``get()`` (the hot path) skips it while all goes well: it returns a
Future, and the gets of one loop iteration go to each node as one get_many; any outcome but a hit or a miss
resumes ``_get`` with that reply.

>>> async with CacheClient(["tcp://127.0.0.1:11311"]) as cache:
...     await cache.set("user:42", {"name": "Ada"})
...     values = await asyncio.gather(*(cache.get(f"user:{i}") for i in range(100)))
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import zmq

from zmqkit.errors import AuthenticationFailed
from zmqkit.handshake import HandshakeWatch, refusal
from zmqkit.loops import check_new_loop
from zmqkit.sockets import NOBLOCK, connect, has_input, make_socket, recv_frames, send_frames

from .actions import Batch, Op, Reply, Sleep, advance, first_reply, parse_dealer_reply
from .core import RESUME, ClientCore
from .protocol import COMMANDS, HEAD

__all__ = ["AsyncCacheClient"]

log = logging.getLogger(__name__)

_GET = COMMANDS[b"get"][0]  # the opcode
_RETRY_SEND = 0.005  # seconds between tries of sends a node was not connected for


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

    def _setup(self) -> None:
        self._socks: list[zmq.Socket] = []
        self._watches: list[HandshakeWatch] = []  # each DEALER's handshake outcome, read when a node is silent
        self._fds: list[int] = []  # each socket's file descriptor, watched by the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the sockets
        self._pending: dict[bytes, Settle] = {}
        self._queued: dict[int, list[tuple[bytes, Settle]]] = {}  # gets to send at the end of this iteration
        # Per node, in order: (request id, frames) not sent yet for want of a connection. A node runs one
        # client's requests in the order they were made (a returning node's invalidation before the read behind
        # it), so a request goes behind these, never past them.
        self._unsent: dict[int, deque[tuple[bytes, list[bytes]]]] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<asyncio CacheClient {len(self.endpoints)} nodes replicas={self.replicas}>"

    def _ready(self) -> None:
        """Open the sockets on first use, in the running loop; a client serves the loop it was first used in."""
        check_new_loop(self._loop, f"CacheClient for {self.endpoints!r}", movable=False)
        self._open()

    def _open(self) -> list[zmq.Socket]:
        """Connect a DEALER per node and have the running loop watch them (plain sockets: pyzmq's asyncio ones
        cost a future and several enum operations per message)."""
        if self._closed:
            raise RuntimeError("CacheClient is closed")
        loop = self._loop = asyncio.get_running_loop()
        try:
            for endpoint in self.endpoints:
                sock = make_socket("dealer", self.options)
                self._socks.append(sock)
                self._watches.append(HandshakeWatch(sock))
                connect(sock, endpoint)
            for node, sock in enumerate(self._socks):
                self._fds.append(int(sock.getsockopt(zmq.FD)))
                loop.add_reader(self._fds[node], self._drain, node)
        except BaseException:
            self.close()
            raise
        return self._socks

    def _drain(self, node: int) -> None:
        """Hand every reply waiting on ``node``'s socket to its call. Reading until EAGAIN re-arms the socket's
        file descriptor (it signals a change, not each message)."""
        sock = self._socks[node]
        pending = self._pending
        while True:
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            parsed = parse_dealer_reply(frames)
            if parsed is not None:
                settle = pending.pop(parsed[0], None)
                if settle is not None:
                    try:
                        settle(parsed[1])
                    except Exception:  # a bug must not stop the replies behind it
                        log.exception("settling a reply failed")

    def refused(self, node: int) -> AuthenticationFailed | None:
        return refusal(self._watches[node : node + 1])

    # -- the fast get: no generator, no Task ----------------------------------------------------------------

    def get(self, key: Any, default: Any = None, *, timeout: float | None = None) -> Any:
        """An awaitable of the value of ``key``, or ``default`` on a miss."""
        target = self.fast_node(key, timeout)
        if target is None:
            return self._run(self._get(key, default, timeout))
        k, node = target
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._ready()
        fut = loop.create_future()
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
            self._send(call.node, call.rid, [b"", call.frame])

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
        if asyncio.get_running_loop() is not self._loop:
            self._ready()
        return True

    def _send(self, node: int, rid: bytes, frames: list[bytes]) -> None:
        """Send request ``rid`` to ``node`` now, or, if the node is not connected (yet, or any more) or older
        requests to it still wait, as soon as it is and they have gone; never once its call is over."""
        waiting = self._unsent.get(node)
        if waiting:
            waiting.append((rid, frames))
            return
        if not self._try_send(node, frames):
            self._unsent[node] = deque([(rid, frames)])
            self._retry_later()
        # Trying to send may take the file descriptor's signal for a reply that came in meanwhile: look for one.
        if has_input(self._socks[node]):
            self._drain(node)

    def _try_send(self, node: int, frames: list[bytes]) -> bool:
        """Send ``frames`` to ``node``; False if it is not connected. Another error is logged: the call times
        out, and its generator fails over."""
        try:
            send_frames(self._socks[node], frames, NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.warning("cannot send to %s: %s", self.endpoints[node], exc.strerror)
        return True

    def _retry_later(self) -> None:
        if self._retry is None:
            self._retry = cast(asyncio.AbstractEventLoop, self._loop).call_later(_RETRY_SEND, self._send_unsent)

    def _send_unsent(self) -> None:
        """Send what waited for a connection, node by node in order, up to the first that still cannot go."""
        self._retry = None
        if self._closed:
            return
        pending = self._pending
        for node, waiting in list(self._unsent.items()):
            while waiting:
                rid, frames = waiting[0]
                # A request whose call is over (timed out, cancelled) is dropped: never sent late.
                if rid in pending and not self._try_send(node, frames):
                    if self._watches[node].refused():  # never connects: its calls are over now, not at timeout
                        for lost, _ in waiting:
                            self._expire_call(lost)
                        waiting.clear()
                    break
                waiting.popleft()
            if not waiting:
                del self._unsent[node]
            if has_input(self._socks[node]):
                self._drain(node)
        if self._unsent:
            self._retry_later()

    async def _io(self, batch: Batch) -> dict[bytes, Reply]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._ready()
        calls = batch.calls
        pending = self._pending
        futures: list[asyncio.Future[Reply | None]] = [loop.create_future() for _ in calls]
        for call, fut in zip(calls, futures, strict=True):
            pending[call.rid] = functools.partial(_set_reply, fut)
            self._send(call.node, call.rid, [b"", call.frame])
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

    def close(self) -> None:
        """Stop watching the sockets and close them; the client cannot be used afterwards."""
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            for fd in self._fds:
                loop.remove_reader(fd)
        self._fds = []
        for watch in self._watches:
            watch.close()
        self._watches = []
        for sock in self._socks:
            sock.close(linger=0)
        self._socks = []  # a later call raises "closed" instead of using a closed socket
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._unsent = {}
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

    def __enter__(self) -> AsyncCacheClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
