"""The asyncio request-reply runners: a client with many requests in flight, and a server for coroutine handlers.

Exported as ``zmqkit.asyncio.Client`` and ``zmqkit.asyncio.Server``. They share everything but the waiting
with the threaded classes (:class:`.core.ClientCore`, :class:`.core.ServerCore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from typing import Any

import zmq

from zmqkit.checks import DEFAULT, Default, check_timeout
from zmqkit.errors import Unavailable
from zmqkit.loops import check_new_loop
from zmqkit.sockets import NOBLOCK, has_input, make_socket

from .core import ClientCore, ServerCore, Value, recv_routed
from .protocol import ERROR, Job, decode, describe_exception, reply_of

__all__ = ["AsyncClient", "AsyncServer"]

log = logging.getLogger(__name__)


class AsyncClient(ClientCore):
    """``await client.request(body)`` with any number of requests in flight at once.

    >>> async with AsyncClient(["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"]) as client:
    ...     replies = await asyncio.gather(*(client.request(b"job %d" % i) for i in range(100)))
    """

    def _setup(self) -> None:
        self._futures: dict[bytes, asyncio.Future[Value]] = {}
        # The loop watches each socket's file descriptor (libzmq's "something changed" signal) and calls _settle
        # when one fires: no task, future or poller per wake-up, as an awaited poll would cost.
        self._reader: asyncio.AbstractEventLoop | None = None
        self._fds = {alias: int(sock.getsockopt(zmq.FD)) for alias, sock in self._socks.items()}
        self._look: set[bytes] = set()  # servers whose socket may hold something unread
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # the protocol deadline the timer is set for
        self._soon: asyncio.Handle | None = None  # a _settle the loop runs on its next turn

    def _nudge(self) -> None:
        # In the fabric's thread: have the watching loop apply the change (new servers get a hello at once, and
        # a call waiting for an instance is sent). With no loop yet, the next request applies it.
        loop = self._reader
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: the next request's loop applies it
                loop.call_soon_threadsafe(self._on_members)

    def _on_members(self) -> None:
        if self._members is not None and self._members.version != self._applied and not self.closed:
            try:
                self._apply_members()
            except Exception as exc:
                self._broken(exc)
                return
            self._settle_safely()

    def _adopt(self, alias: bytes) -> None:
        fd = self._fds[alias] = int(self._socks[alias].getsockopt(zmq.FD))
        if self._reader is not None:
            self._reader.add_reader(fd, self._readable, alias)
            self._look.add(alias)

    def _forget(self, alias: bytes) -> None:
        fd = self._fds.pop(alias)
        self._look.discard(alias)
        if self._reader is not None and not self._reader.is_closed():
            self._reader.remove_reader(fd)

    async def request(self, body: Value, timeout: float | Default | None = DEFAULT) -> Value:
        """Send ``body``; return the reply, or raise RequestTimeout, RemoteError or Unavailable.

        ``timeout``: seconds for the whole call, retries included; DEFAULT is the client's ``timeout``, None
        no limit. Cancelled, the call is forgotten at once (no retry, no place held); a server that has the
        request still runs it, and its reply is dropped.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._reader:
            self._watch(loop)
        rid = self._submit(body, timeout)
        fut: asyncio.Future[Value] = loop.create_future()
        self._futures[rid] = fut
        if self._soon is None:
            # Send once every coroutine that is ready has queued its request: one batch of sends, one look at
            # each socket and one look at the timer per turn of the loop, rather than per request.
            self._soon = loop.call_soon(self._settle_soon)
        try:
            return await fut
        finally:
            # Not done: interrupted some other way. Cancelled: the caller gave up (a cancelled task cancels the
            # future it awaits). Either way the request is forgotten, so it holds no place and is not retried.
            if not fut.done() or fut.cancelled():
                self._futures.pop(rid, None)
                self._proto.cancel(rid)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` watch the sockets: on first use, or after the loop that watched them stopped (a client
        outliving an ``asyncio.run``). ConfigurationError if that loop still runs, in another thread."""
        if self.closed:
            return  # _submit says so
        old = self._reader
        check_new_loop(old, f"request-reply client for {self.endpoints!r}", movable=True)
        if old is not None:
            self._leave(old)
        for alias, fd in self._fds.items():
            loop.add_reader(fd, self._readable, alias)
        self._reader = loop
        self._look.update(self._fds)  # what arrived while no loop watched (the servers' ready answers)

    def _leave(self, old: asyncio.AbstractEventLoop) -> None:
        """Stop watching from ``old`` (a loop that is not running); its timer and scheduled look are gone
        with it. Calls still waiting there are forgotten, as a cancelled call is, and fail if it runs again."""
        if not old.is_closed():
            for fd in self._fds.values():
                old.remove_reader(fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        if self._soon is not None:  # else it would run in that loop, if that loop ran again
            self._soon.cancel()
            self._soon = None
        moved = Unavailable(f"request-reply client for {self.endpoints!r} moved to another event loop")
        for rid, fut in self._futures.items():
            self._proto.cancel(rid)
            if not fut.done() and not old.is_closed():
                fut.set_exception(moved)
        self._futures.clear()

    def _readable(self, alias: bytes) -> None:
        self._look.add(alias)
        self._settle_safely()

    def _settle(self) -> None:
        """Send what is queued and read what arrived, until no socket has anything for us; set the timer.

        Using a socket directly consumes the edge-triggered signal on its file descriptor that the loop's reader
        waits for; so every socket used is looked at (EVENTS) and read until empty, and the next arrival
        signals again.
        """
        if self.closed:
            return
        proto = self._proto
        look = self._look
        while True:
            if proto.outbox:
                self._flush(look)  # every socket sent on, a request moved to another server's included
            if not look:
                break
            alias = look.pop()
            # One question (EVENTS) first: a third of the cost of the failed read that ends a drain, and a
            # socket just sent to seldom has replies waiting.
            if has_input(self._socks[alias]):
                self._drain(alias)  # what it reads may queue more to send (acks, requests that waited)
        if proto.completed:
            self._deliver()
        due = proto.next_deadline()
        if due < self._timer_at:
            # Touched only when the first deadline moves earlier; when it moves later the timer fires early,
            # finds nothing due and is set again.
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = asyncio.get_running_loop().call_later(max(0.0, due - proto.clock()), self._on_timer)

    def _on_timer(self) -> None:
        """Time out, retry and probe what is due (the protocol's ``tick``), then send what that produced."""
        self._timer = None
        self._timer_at = math.inf
        if not self.closed:
            self._proto.tick()
            self._settle_safely()

    def _settle_soon(self) -> None:
        """The settle ``request`` asked of the loop's next turn, for the requests queued in this one."""
        self._soon = None
        self._settle_safely()

    def _settle_safely(self) -> None:
        """``_settle`` from a loop callback, where an error would reach no caller: fail the callers instead."""
        try:
            self._settle()
        except Exception as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        log.exception("request-reply client for %r stopped reading", self.endpoints)
        self._proto.fail_all(Unavailable(f"client for {self.endpoints!r} stopped: {exc}"))
        self._deliver()

    def _deliver(self) -> None:
        futures = self._futures
        for rid, (ok, value) in self._proto.completed:
            fut = futures.pop(rid, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(self._explain(value))
        self._proto.completed.clear()

    def close(self) -> None:
        """At once: fail what is in flight with Unavailable, stop watching the sockets and close them.
        Idempotent; calls after raise Closed."""
        if self.closed:
            return
        if self._reader is not None:
            if not self._reader.is_closed():
                for fd in self._fds.values():
                    self._reader.remove_reader(fd)
            self._reader = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._proto.fail_all(Unavailable(f"client for {self.endpoints!r} was closed"))
        self._deliver()
        self._close_sockets()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close; with ``drain``, first let the calls in flight finish (up to ``timeout``; None: no limit)."""
        limit = check_timeout(timeout, allow_zero=True)
        pending = [fut for fut in self._futures.values() if not fut.done()]
        if drain and pending and not self.closed:
            await asyncio.wait(pending, timeout=limit)
        self.close()

    async def wait_ready(self, timeout: float | None = 5.0) -> list[str]:
        """Wait until a server has said it is ready (or ``timeout``; None: no limit); the endpoints that are.

        An empty list means none answered in time; requests made now would wait for one.
        """
        end = self._ready_by(timeout)
        loop = asyncio.get_running_loop()
        if loop is not self._reader:
            self._watch(loop)
        self._settle_safely()
        clock = self._proto.clock
        # The loop reads the sockets as they signal; a short look now and then costs nothing worth saving here.
        while not (ready := self._ready()) and clock() < end and not self.closed:
            await asyncio.sleep(min(0.005, max(0.0, end - clock())))
        return ready

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncServer(ServerCore):
    """Serve requests in the running event loop; a coroutine handler runs as a task per request.

    >>> async def render(body: bytes) -> bytes:
    ...     return await make_thumbnail(body)
    >>> async with AsyncServer("tcp://*:5555", render, concurrency=100) as server:
    ...     await server.leave(timeout=10)

    ``concurrency`` bounds how many handler coroutines run at once. A plain function handler runs inline in the
    loop (keep it quick, or use the threaded ``zmqkit.patterns.Server``).
    """

    def _setup(self) -> None:
        self._is_coroutine = inspect.iscoroutinefunction(self.handler)
        self._socket: Any = None
        self._sock: zmq.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> AsyncServer:
        """Bind and start serving; ``endpoints`` then holds the real endpoints. Closed after close or leave."""
        if self._closed:
            raise self._closed_error()
        if self._task is None:
            router = make_socket("router", self._options, asyncio=True)
            self._open(router)
            try:
                self._announce_up()
            except BaseException:
                router.close(linger=0)
                raise
            self._socket = router
            # Non-blocking reads and writes go through a plain view of the same socket (see _settle).
            self._sock = zmq.Socket.shadow(router.underlying)
            self._slots = asyncio.Semaphore(self.concurrency)
            self._task = asyncio.get_running_loop().create_task(self._serve())
        return self

    async def _serve(self) -> None:
        while True:
            await self._socket.poll(None, zmq.POLLIN)
            self._settle()

    def _settle(self) -> None:
        """Handle everything waiting and send every answer, until the socket has nothing more for us.

        Reading and writing the socket directly consumes the edge-triggered wake-up the serve task's poll
        waits for; leaving nothing unread means the next arrival wakes it again.
        """
        sock = self._sock
        if sock is None:
            return
        proto = self._proto
        while True:
            # Read until the socket is empty: one failed read per wake-up rather than a question per message
            # (a question costs a third of a failed read; pipelining clients leave many messages per wake-up).
            with contextlib.suppress(zmq.Again):  # messages arrive whole: only a first frame raises it
                while True:
                    job = proto.on_message(recv_routed(sock, NOBLOCK))
                    if job is None:
                        continue
                    if self._is_coroutine:
                        task = asyncio.get_running_loop().create_task(self._run(job))
                        self._jobs.add(task)
                        task.add_done_callback(self._jobs.discard)
                    else:
                        proto.finish(job, *self._execute(job))
            if not proto.outbox:
                return
            self._flush(sock)
            if not has_input(sock):  # what came in while sending, if anything
                return

    async def _answer(self, job: Job) -> tuple[int, int, bytes]:
        """Run the coroutine handler on one job (overridden by the asyncio RpcServer)."""
        try:
            value = decode(job.codec, job.body, self._allow_pickle)
            return reply_of(self._codec, await self.handler(value))
        except Exception as exc:
            return ERROR, 0, describe_exception(exc)

    async def _run(self, job: Job) -> None:
        assert self._slots is not None
        async with self._slots:
            result = await self._answer(job)
        self._proto.finish(job, *result)
        sock = self._sock
        if sock is not None:
            self._flush(sock)
            if has_input(sock):  # sending consumed the wake-up of what came in meanwhile
                self._settle()

    async def leave(self, timeout: float = 10.0) -> bool:
        """Say goodbye, refuse new work, finish what is held, close; True if nothing was cut short."""
        if self._sock is None:
            self._closed = True
            return self._left_cleanly
        proto = self._proto
        self._announce_leaving()
        proto.leave()
        self._settle()
        deadline = self._clock() + timeout
        # Drained turns true on replies, acks (read by the serve task) and, for idle clients, with time alone.
        while not proto.drained and self._clock() < deadline:
            await asyncio.sleep(0.01)
        self._left_cleanly = proto.drained
        if not self._left_cleanly:
            log.warning("server on %r left with %d request(s) unfinished", self.endpoints, proto.held)
        self.close()
        return self._left_cleanly

    def close(self) -> None:
        """Stop now: handlers still running are cancelled; their clients retry elsewhere. Idempotent."""
        self._closed = True
        self._announce_leaving()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for task in list(self._jobs):
            task.cancel()
        if self._socket is not None:
            self._socket.close()  # its linger lets the last replies leave
            self._socket = self._sock = None
        self._announce_down()

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close; with ``drain``, leave gracefully first (goodbye, finish what is held, up to ``timeout``)."""
        limit = check_timeout(timeout, allow_zero=True)
        if drain:
            await self.leave(math.inf if limit is None else limit)
        self.close()

    async def __aenter__(self) -> AsyncServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
