"""The asyncio runner of the cache client core: ``zmqkit.asyncio.CacheClient``.

Every call in flight shares one DEALER per node (pipelining): requests go out at once; the event loop watches
each socket's file descriptor, and what arrives is handed to the call waiting for its request id. The gets of
one loop iteration go to each node as one get_many. Commands run their generator from ``core.py`` as
coroutines; a ``get()`` takes the fast path (core.py) while all goes well: it returns a :class:`Pending`, a
Future that is also a Coroutine, so ``gather`` makes no Task per get and ``create_task``/``TaskGroup`` take it.

>>> async with CacheClient(["tcp://127.0.0.1:11311"]) as cache:
...     await cache.set("user:42", {"name": "Ada"})
...     values = await asyncio.gather(*(cache.get(f"user:{i}") for i in range(100)))
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar, cast

import zmq

from zmqkit.checks import check_timeout
from zmqkit.errors import AuthenticationFailed, Closed
from zmqkit.handshake import HandshakeWatch, refusal
from zmqkit.loops import check_new_loop
from zmqkit.sockets import NOBLOCK, connect, has_input, make_socket, recv_frames, send_frames

from .actions import Batch, Call, Reply, Sleep, advance, parse_dealer_reply
from .core import Awaiting, ClientCore, Timeout, Value
from .keys import Key
from .protocol import COMMANDS, HEAD

__all__ = ["AsyncCacheClient", "Pending"]

T = TypeVar("T")

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


class Pending(asyncio.Future[T], Coroutine[Any, Any, T]):
    """A call in flight: a Future (``gather`` waits on it as is, no Task) that is also a Coroutine, so
    ``create_task``, ``TaskGroup.create_task`` and ``await`` all take it. Cancelling it forgets the call."""

    def send(self, value: None) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True
            return self  # what a Task waits on: this future
        raise StopIteration(self.result())  # (the result, or its error raised)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self.cancel()
        raise typ if val is None else val

    def close(self) -> None:
        self.cancel()


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


class AsyncCacheClient(ClientCore, Awaiting):
    """The cache client for asyncio: the same methods as :class:`zmqkit.cache.CacheClient`, returning coroutines.

    ``gather`` over many gets is cheap (the gets of one loop iteration travel as one get_many per node). Used
    from one event loop at a time: once that loop has ended, it moves to the next. ``async with`` (or ``await
    aclose()``) lets calls in flight finish, then releases its sockets; ``close()`` releases them at once.
    Cancelling a call forgets it here; a node may still carry out a write already sent.
    """

    def _setup(self) -> None:
        self._socks: list[zmq.Socket] = []
        self._watches: list[HandshakeWatch] = []  # each DEALER's handshake outcome, read when a node is silent
        self._fds: list[int] = []  # each socket's file descriptor, watched by the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the sockets
        self._pending: dict[bytes, Settle] = {}
        # (node, timeout) -> gets to send at the end of this loop iteration
        self._queued: dict[tuple[int, float | None], list[tuple[bytes, Settle]]] = {}
        # Per node, in order: (request id, frames) not sent yet for want of a connection. A node runs one
        # client's requests in the order they were made (a returning node's invalidation before the read behind
        # it), so a request goes behind these, never past them.
        self._unsent: dict[int, deque[tuple[bytes, list[bytes]]]] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._active = 0  # calls in flight (aclose waits for them)
        self._idle: asyncio.Event | None = None  # set when _active drops to 0 while aclose waits

    def __repr__(self) -> str:
        return f"<asyncio CacheClient {len(self.endpoints)} nodes replicas={self.replicas}>"

    def _ready(self) -> None:
        """Open the sockets on first use, in the running loop (plain sockets watched by the loop: pyzmq's asyncio
        ones cost a future per message); move to the running loop when the one served has ended (what was in
        flight there ended with it)."""
        if self._closed:
            raise Closed(f"CacheClient for {self.endpoints!r} is closed")
        check_new_loop(self._loop, f"CacheClient for {self.endpoints!r}", movable=True)
        old, loop = self._loop, asyncio.get_running_loop()
        try:
            if not self._socks:
                self._open()
            elif old is not None and not old.is_closed():
                for fd in self._fds:
                    old.remove_reader(fd)
            self._forget_calls()
            self._active = 0
            for node, fd in enumerate(self._fds):
                loop.add_reader(fd, self._drain, node)
            self._loop = loop
        except BaseException:
            self.close()
            raise

    def _open(self) -> list[int]:
        """Open a DEALER to each node past those open (the node table only grows); their new indexes."""
        added = list(range(len(self._socks), len(self.endpoints)))
        for node in added:
            sock = make_socket("dealer", self.options)
            self._socks.append(sock)
            self._watches.append(HandshakeWatch(sock))
            self._fds.append(int(sock.getsockopt(zmq.FD)))
            connect(sock, self.endpoints[node])
        return added

    def _nodes_added(self) -> None:
        # Sockets open with the first call; after that, a node's socket opens when membership brings it.
        if not self._socks or self._closed:
            return
        added = self._open()
        if self._loop is not None and not self._loop.is_closed():
            for node in added:
                self._loop.add_reader(self._fds[node], self._drain, node)

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

    # -- the fast get (core.py): no generator, no Task -------------------------------------------------------

    def _get_fast(self, key: Key, default: Value, timeout: Timeout) -> Value:
        route = self.fast_get(key)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # asyncio.run(cache.get(k)): a coroutine, run in the loop to come
            route = None
        if route is None:
            return self._run(self._get(key, default, timeout))
        if loop is not self._loop:
            self._ready()
        _frame, node, _health, k = route
        fut: Pending[Value] = Pending(loop=loop)
        settle = functools.partial(self._settle_get, fut, node, key, default, timeout)
        self._active += 1
        self._enqueue(node, self._wait(timeout), k, settle)
        return cast(Value, fut)  # (an awaitable of the value, as ``command`` types it)

    def _settle_get(
        self, fut: Pending[Value], node: int, key: Key, default: Value, timeout: Timeout, reply: Reply | None
    ) -> None:
        """Resolve a fast get, or hand its reply to the get's generator (see ``fast_value``)."""
        self._done_call()
        if fut.done():  # cancelled by its caller
            return
        try:
            done, value = self.fast_value(node, reply, default)
        except Exception as exc:
            fut.set_exception(exc)
            return
        if done:
            fut.set_result(value)
            return
        if self._closed:  # what the generator would find out on its retry
            fut.set_exception(Closed(f"CacheClient for {self.endpoints!r} is closed"))
            return
        task = asyncio.ensure_future(self._drive(self._get(key, default, timeout, (node, reply))))
        task.add_done_callback(functools.partial(_chain, fut))
        fut.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)

    def _done_call(self) -> None:
        self._active -= 1
        if not self._active and self._idle is not None:
            self._idle.set()

    def _enqueue(self, node: int, wait: float | None, key: bytes, settle: Settle) -> None:
        """Queue a get of ``key`` to ``node`` till the end of this loop iteration, to travel with the other gets
        to that node with the same timeout in one get_many (auto-pipelining)."""
        queued = self._queued
        if not queued:
            asyncio.get_running_loop().call_soon(self._flush_gets)
        entries = queued.get((node, wait))
        if entries is None:
            queued[node, wait] = [(key, settle)]
        else:
            entries.append((key, settle))

    def _flush_gets(self) -> None:
        """Send the gets queued in this loop iteration: one get_many per node and timeout."""
        queued, self._queued = self._queued, {}
        loop = asyncio.get_running_loop()
        for (node, wait), entries in queued.items():
            call = self.merge_gets(node, [key for key, _ in entries])
            settle = entries[0][1] if len(entries) == 1 else functools.partial(self._split, [s for _, s in entries])
            if wait is None:
                self._pending[call.rid] = settle
            else:  # one timer for the whole group
                timer = loop.call_later(wait, self._expire_call, call.rid)
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

    def _run(self, op: Generator[Any, Any, T]) -> T:
        return cast(T, self._drive(op))  # (a coroutine of the result, as ``command`` types it)

    async def _drive(self, op: Generator[Any, Any, T]) -> T:
        """Drive ``op`` in the running loop."""
        if asyncio.get_running_loop() is not self._loop:
            self._ready()
        self._active += 1
        try:
            value: Any = None
            error: Exception | None = None
            while True:
                done, action = advance(op, value, error)
                if done:
                    return cast(T, action)
                value, error = None, None
                if type(action) is Batch:
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
        finally:
            self._done_call()

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
        if self._closed:
            raise Closed(f"CacheClient for {self.endpoints!r} is closed")
        loop = asyncio.get_running_loop()
        calls = batch.calls
        pending = self._pending
        futures: list[asyncio.Future[Reply | None]] = [loop.create_future() for _ in calls]
        if len(calls) == 1 and calls[0].frame[HEAD] == _GET:  # one get joins this iteration's gets to its node
            settle = functools.partial(_set_reply, futures[0])
            self._enqueue(calls[0].node, batch.timeout, calls[0].frame[HEAD + 1 :], settle)
            calls = [Call(calls[0].node, b"", b"", [])]  # (its reply comes through the get_many, not by rid)
        else:
            for call, fut in zip(calls, futures, strict=True):
                pending[call.rid] = functools.partial(_set_reply, fut)
                self._send(call.node, call.rid, [b"", call.frame])
        timer = None if batch.timeout is None else loop.call_later(batch.timeout, _expire, futures)
        try:
            replies = {}
            for call, fut in zip(batch.calls, futures, strict=True):
                reply = await fut
                if reply is not None:
                    replies[call.rid] = reply
            return replies
        finally:
            if timer is not None:
                timer.cancel()
            for call in calls:
                pending.pop(call.rid, None)

    def _forget_calls(self) -> None:
        """End every call in flight as unanswered (on close, or when the loop they ran in has ended)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._unsent = {}
        pending, self._pending = self._pending, {}
        queued, self._queued = self._queued, {}
        for settle in [*pending.values(), *(s for entries in queued.values() for _, s in entries)]:
            with contextlib.suppress(RuntimeError):  # a future of a loop that has ended
                settle(None)

    def close(self) -> None:
        """Stop watching the sockets and close them now (calls in flight end unanswered); idempotent."""
        self._closed = True
        self._close_members()
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
        self._socks = []  # a later call raises Closed instead of using a closed socket
        self._forget_calls()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close; with ``drain``, first let the calls in flight finish (up to ``timeout`` s, None: no limit)."""
        check_timeout(timeout)
        if drain and self._active and not self._closed:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("CacheClient for %r: closing with %d call(s) in flight", self.endpoints, self._active)
            finally:
                self._idle = None
        self.close()

    async def __aenter__(self) -> AsyncCacheClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
