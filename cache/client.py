"""CacheClient: the blocking runner of the cache client core, and a MutableMapping over the whole cluster.

>>> with CacheClient(["tcp://10.0.0.1:11311", "tcp://10.0.0.2:11311"]) as cache:
...     cache["user:42"] = {"name": "Ada"}        # JSON-able values come back with their type
...     cache.get_many(["user:42", "user:43"])    # both nodes asked at once
{'user:42': {'name': 'Ada'}}

Thread-safe: each thread gets its own REQ socket per node (a socket belongs to one thread); node health and
the rejoin hints are shared under a lock. The commands themselves are in ``core.py``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Generator, Iterator, MutableMapping
from types import TracebackType
from typing import Any, TypeVar, cast

import zmq

from zmqkit.checks import to_ms
from zmqkit.errors import AuthenticationFailed, Closed
from zmqkit.handshake import HandshakeWatch, refusal, wait_writable
from zmqkit.sockets import (
    NOBLOCK,
    SocketOptions,
    connect,
    make_socket,
    recv_frame,
    send_frame,
    set_recv_timeout,
)

from .actions import Batch, Call, Compute, Reply, Sleep, advance, parse_reply
from .core import REQ_RID, Blocking, ClientCore, Timeout, Value
from .keys import Key
from .protocol import HEAD, HEADER

__all__ = ["CacheClient"]

T = TypeVar("T")
_RID = len(HEADER)  # the request id's offset in a reply
_FOREVER_MS = 2**31 - 1  # a wait for a connection with no limit (libzmq's poll takes ms in an int)

_MISSING: Value = cast("Value", object())  # a default that no stored value is
_clients: weakref.WeakValueDictionary[int, CacheClient] = weakref.WeakValueDictionary()  # (a Mapping: unhashable)


def _forget_parent_sockets() -> None:
    """In a forked child: the parent's sockets belong to the parent's context; each client makes new ones."""
    for client in list(_clients.values()):
        client._local = threading.local()
        client._lock = threading.Lock()
        client._all = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_sockets)


class _ThreadSockets:
    """One thread's REQ per node: the cheapest round trip (one frame each way, and libzmq matches the reply),
    and ONE connection per node, so what this thread sends a node runs there in the order it was sent."""

    def __init__(self, endpoints: list[str], options: SocketOptions | None) -> None:
        self.reqs: list[zmq.Socket] = []
        self.watches: list[HandshakeWatch] = []  # each REQ's handshake outcome, read only when a node is silent
        self.node_of: dict[zmq.Socket, int] = {}
        self.recv_ms: list[int] = []  # each REQ's RCVTIMEO, set only when a call needs another
        self.options = options
        self.thread = threading.current_thread()
        try:
            self.grow(endpoints)
        except BaseException:
            self.close()
            raise

    def grow(self, endpoints: list[str]) -> None:
        """Connect to the nodes of ``endpoints`` past those this thread has (the node table only grows)."""
        for endpoint in endpoints[len(self.reqs) :]:
            sock = make_socket("req", self.options)
            self.node_of[sock] = len(self.reqs)
            self.reqs.append(sock)
            self.recv_ms.append(-1)
            self.watches.append(HandshakeWatch(sock))
            connect(sock, endpoint)

    def close(self) -> None:
        for watch in self.watches:
            watch.close()
        for sock in self.reqs:
            sock.close(linger=0)


# (MutableMapping.get's type is narrower than ClientCore.get's: the same call at run time, ClientCore's wins)
class CacheClient(ClientCore, Blocking, MutableMapping[Key, Value]):  # type: ignore[misc]
    """A sharded cache client over nodes at ``endpoints`` (a list, a comma-separated string, or
    ``{endpoint: weight}``); blocking calls, safe to share between threads.

    ``timeout`` is per attempt (None: no limit); a node that misses ``retries + 1`` answers in a row is skipped for
    ``dead_timeout`` seconds (on ``clock``). ``replicas=N`` writes every key to N nodes.
    ``codec="auto+pickle"`` lets values JSON cannot carry travel as pickle (trusted nodes only).
    ``max_item=None`` lets each node's own max item size decide (a bigger value raises ``TooLarge``); a size also
    refuses bigger values here. Keys are str, bytes, int or tuples (``zmqkit.cache.keys``).
    """

    def _setup(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the list of every thread's sockets
        self._all: list[_ThreadSockets] = []
        self._closed = False
        _clients[id(self)] = self

    def __repr__(self) -> str:
        return f"<CacheClient {len(self.endpoints)} nodes replicas={self.replicas}>"

    # -- the runner ----------------------------------------------------------------------------------------

    def refused(self, node: int) -> AuthenticationFailed | None:
        try:
            state = self._local.sockets
        except AttributeError:
            return None
        return refusal(state.watches[node : node + 1])

    def _sockets(self) -> _ThreadSockets:
        try:
            return self._local.sockets
        except AttributeError:
            pass
        with self._lock:
            if self._closed:
                raise Closed(f"CacheClient for {self.endpoints!r} is closed")
            state = _ThreadSockets(self.endpoints, self.options)
            # Sockets of threads that ended can go now; the living keep theirs.
            for old in [s for s in self._all if not s.thread.is_alive()]:
                old.close()
                self._all.remove(old)
            self._all.append(state)
        self._local.sockets = state
        return state

    def _get_fast(self, key: Key, default: Value, timeout: Timeout) -> Value:
        # The fast path (core.py): the key's request frame, made once, sent on this thread's REQ; a hit or a miss
        # is read here, anything else goes on in the get's generator as the reply to its first request.
        route = self.fast_get(key)
        if route is None:
            return self._run(self._get(key, default, timeout))
        frame, node, _health, _k = route
        reply = self._request(node, REQ_RID, frame, self._wait(timeout))
        done, value = self.fast_value(node, reply, default)
        if done:
            return value
        return self._run(self._get(key, default, timeout, (node, reply)))

    def _run(self, op: Generator[Any, Any, T]) -> T:
        step = advance(op, None, None)
        while not step[0]:
            step = advance(op, *self._perform(step[1]))
        return cast(T, step[1])

    def _perform(self, action: Batch | Sleep | Compute) -> tuple[Any, Exception | None]:
        """Do what the command asked: ``(outcome, None)``, or ``(None, the error)`` to throw into it."""
        if isinstance(action, Batch):
            return self._io(action), None
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            return None, None
        return action.run()  # Compute: the memoized function

    def _io(self, batch: Batch) -> dict[bytes, Reply]:
        """Send every call, then gather replies until all are in or the batch's timeout passes."""
        calls = batch.calls
        if len(calls) == 1:
            call = calls[0]
            reply = self._request(call.node, call.rid, call.frame, batch.timeout)
            return {} if reply is None else {call.rid: reply}
        state = self._sockets()
        if len(state.reqs) < len(self.endpoints):  # a node this thread has no socket for yet (membership)
            state.grow(self.endpoints)
        socks = state.reqs
        deadline = None if batch.timeout is None else time.monotonic() + batch.timeout
        # A REQ carries one request at a time: the nodes are asked at once, and each node's calls one after
        # another, in order (a returning node's invalidation runs before the request behind it).
        queues: dict[int, list[Call]] = {}
        for call in reversed(calls):
            queues.setdefault(call.node, []).append(call)  # pop() takes them in call order
        waiting: dict[int, Call] = {}  # node -> the call its REQ waits on
        unsent = set(queues)  # nodes whose next call is not out yet
        replies: dict[bytes, Reply] = {}
        while True:
            for node in list(unsent):
                try:
                    send_frame(socks[node], queues[node][-1].frame, NOBLOCK)
                except zmq.Again:  # not connected (yet, or any more): wait for it within the deadline
                    continue
                waiting[node] = queues[node].pop()
                unsent.discard(node)
            remaining = 1e9 if deadline is None else deadline - time.monotonic()
            if (not waiting and not unsent) or remaining <= 0:
                return replies
            # A node not connected may have refused our handshake: it is not waited for, and its monitor wakes us.
            unsent.difference_update([n for n in unsent if state.watches[n].refused()])
            if not waiting and not unsent:
                return replies
            items = [(socks[n], zmq.POLLIN) for n in waiting] + [(socks[n], zmq.POLLOUT) for n in unsent]
            items += [(state.watches[n].socket, zmq.POLLIN) for n in unsent]
            for sock, events in zmq.zmq_poll(items, -1 if deadline is None else to_ms(remaining)):
                node = state.node_of.get(sock, -1)
                if node < 0:  # a monitor: looked at on the next turn
                    continue
                if events & zmq.POLLIN:
                    try:
                        parsed = parse_reply(recv_frame(sock, NOBLOCK))
                    except zmq.Again:
                        continue
                    call = waiting[node]
                    if parsed is not None and parsed[0] == call.rid:
                        replies[call.rid] = parsed[1]
                        del waiting[node]
                        if queues[node]:
                            unsent.add(node)

    def _request(self, node: int, rid: bytes, frame: bytes, timeout: float | None) -> Reply | None:
        """One request on this thread's REQ to ``node``: send, then a receive bounded by RCVTIMEO (no poll call)."""
        try:
            state = self._local.sockets
        except AttributeError:  # this thread's first call
            state = self._sockets()
        try:
            sock = state.reqs[node]
        except IndexError:  # a node this thread has no socket for yet (membership)
            state.grow(self.endpoints)
            sock = state.reqs[node]
        wait_ms = to_ms(timeout)
        try:
            send_frame(sock, frame, NOBLOCK)
        except zmq.Again:  # not connected (yet, or any more): wait for it within the timeout
            start = time.monotonic()
            # (a refused handshake ends the wait at once)
            if not wait_writable(sock, state.watches[node], _FOREVER_MS if wait_ms < 0 else wait_ms):
                return None
            send_frame(sock, frame, NOBLOCK)
            if timeout is not None:
                wait_ms = max(1, to_ms(timeout - (time.monotonic() - start)))
        if state.recv_ms[node] != wait_ms:
            set_recv_timeout(sock, wait_ms)
            state.recv_ms[node] = wait_ms
        try:
            reply = recv_frame(sock)
        except zmq.Again:  # timed out; the socket may send again, and libzmq drops the late reply
            return None
        if reply[_RID:HEAD] == rid and len(reply) > HEAD and reply.startswith(HEADER):  # the hot path, inline
            return reply[HEAD], reply[HEAD + 1 :]
        return _req_reply(reply, rid)

    # -- MutableMapping ------------------------------------------------------------------------------------

    def __getitem__(self, key: Key) -> Value:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Key, value: Value) -> None:
        self.set(key, value)

    def __delitem__(self, key: Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self.get(cast(Key, key), _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[Key]:
        raise TypeError("a cache cluster cannot list its keys; use get_many() with the keys you want")

    def clear(self) -> None:
        """Empty every node (``flush_all``)."""
        self.flush_all()

    def __len__(self) -> int:
        """Items stored on the nodes that answer (replicas count once per copy)."""
        return sum(s.get("items", 0) for s in self.stats().values())

    # -- lifetime ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every thread's sockets; the client cannot be used afterwards."""
        self._close_members()
        with self._lock:
            self._closed = True
            for state in self._all:
                state.close()
            self._all.clear()
            self._local = threading.local()  # every thread's next call finds no sockets, and "closed"

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _req_reply(reply: bytes, rid: bytes) -> Reply | None:
    """``(status, body)`` of the reply read off a REQ for request ``rid``, or None if it is not one."""
    parsed = parse_reply(reply)  # logs what is wrong with it
    return parsed[1] if parsed is not None and parsed[0] == rid else None
