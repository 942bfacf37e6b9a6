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
from collections.abc import Callable, Iterator, MutableMapping
from types import TracebackType
from typing import Any

import zmq

from zmqkit.errors import AuthenticationFailed
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

from .actions import Batch, Call, Op, Reply, Sleep, advance, first_reply, parse_reply
from .core import REQ_RID, RESUME, ClientCore, map_op
from .protocol import HEAD, HEADER, NOT_FOUND_BYTE, OK_BYTE, encode_request

__all__ = ["CacheClient"]

_RID = len(HEADER)  # the request id's offset in a reply
_BYTES_HIT = HEADER + REQ_RID + OK_BYTE + b"\x00"  # a get's reply up to its value, when that is bytes (codec 0)
_BYTES_AT = len(_BYTES_HIT)
_MISS_REPLY = HEADER + REQ_RID + NOT_FOUND_BYTE
_HIT_REPLY = HEADER + REQ_RID + OK_BYTE  # a get's reply up to its value
_VALUE_AT = len(_HIT_REPLY)

_MISSING = object()
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
        try:
            for endpoint in endpoints:
                sock = make_socket("req", options)
                self.reqs.append(sock)
                self.watches.append(HandshakeWatch(sock))
                connect(sock, endpoint)
        except BaseException:
            self.close()
            raise
        self.node_of = {sock: i for i, sock in enumerate(self.reqs)}
        self.recv_ms = [-1] * len(self.reqs)  # each REQ's RCVTIMEO, set only when a call needs another
        self.thread = threading.current_thread()

    def close(self) -> None:
        for watch in self.watches:
            watch.close()
        for sock in self.reqs:
            sock.close(linger=0)


class CacheClient(ClientCore, MutableMapping[Any, Any]):
    """A sharded cache client over nodes at ``endpoints`` (a list, a comma-separated string, or
    ``{endpoint: weight}``); blocking calls, safe to share between threads.

    ``timeout`` is per attempt; a node that misses ``retries + 1`` answers in a row is skipped for
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
        self._get_ms = _wait_ms(self.timeout)  # the RCVTIMEO a get needs: its REQ must have it already
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
                raise RuntimeError("CacheClient is closed")
            state = _ThreadSockets(self.endpoints, self.options)
            # Sockets of threads that ended can go now; the living keep theirs.
            for old in [s for s in self._all if not s.thread.is_alive()]:
                old.close()
                self._all.remove(old)
            self._all.append(state)
        self._local.sockets = state
        return state

    def get(self, key: Any, default: Any = None, *, timeout: float | None = None) -> Any:
        """The value of ``key``, or ``default`` on a miss."""
        # The hottest call, inline: the key's request frame is made once (ClientCore.req_get), then each get is a
        # send and a receive on this thread's REQ, a hit or a miss read here. Anything else (the first get of a
        # key, a timeout of its own, a node not alive, an error status) takes _get_once's longer way.
        route = self.req_gets.get(key) if type(key) is str else None
        if route is None or timeout is not None:
            return self._get_once(key, default, timeout)
        frame, node, health, _k = route
        try:
            state = self._local.sockets
        except AttributeError:  # this thread's first call
            return self._get_once(key, default, timeout)
        sock = state.reqs[node]
        if health.dead_until is not None or health.failures or state.recv_ms[node] != self._get_ms:
            return self._get_once(key, default, timeout)  # (that way resets the failures when the node answers)
        try:
            send_frame(sock, frame, NOBLOCK)
        except zmq.Again:  # not connected (yet, or any more): _request waits for it
            return self._get_once(key, default, timeout)
        try:
            reply = recv_frame(sock)
        except zmq.Again:  # no answer in time: the generator fails over, as after its own first request
            return self._run(self._get(key, default, None), (node, None))
        if reply[:_BYTES_AT] == _BYTES_HIT:  # a bytes value: no codec to run
            return reply[_BYTES_AT:]
        if reply == _MISS_REPLY:
            return default
        if reply[:_VALUE_AT] == _HIT_REPLY:
            return self.decode_value(reply[_VALUE_AT:])
        return self._get_result(key, default, node, _req_reply(reply, REQ_RID))

    def _get_once(self, key: Any, default: Any, timeout: float | None) -> Any:
        """:meth:`get` the long way: one request as ``_single`` makes it, or the generator."""
        route = self.req_get(key) if timeout is None else None
        if route is None or route[2].dead_until is not None:
            return super().get(key, default, timeout=timeout)
        frame, node, _health, _k = route
        return self._get_result(key, default, node, self._request(node, REQ_RID, frame, self.timeout))

    def _get_result(self, key: Any, default: Any, node: int, reply: Reply | None) -> Any:
        """A get's value from the reply to its one request (see ``ClientCore.fast_get_result``)."""
        value = self.fast_get_result(node, reply, default)
        if value is RESUME:
            return self._run(self._get(key, default, None), (node, reply))
        return value

    def _single(
        self,
        key: Any,
        command: bytes,
        args: Callable[[bytes], list[bytes]],
        write: bool,
        done: Callable[[Reply], Any],
        timeout: float | None,
    ) -> Any:
        # One-key calls skip their generator while all goes well: one request to the key's node, its reply
        # checked here. Without an answer, the generator takes over as if its first request had had none:
        # failover, dead nodes and rejoin hints are handled there.
        target = self.fast_node(key, timeout)
        if target is None:
            return super()._single(key, command, args, write, done, timeout)
        k, node = target
        rid = self.next_rid()
        reply = self._request(node, rid, encode_request(rid, command, args(k)), self.timeout)
        if reply is None:
            return self._run(map_op(self._one(key, command, args, write, None), done), (node, None))
        self.answered(node)
        self._raise_for(reply, k)
        return done(reply)

    def _run(self, op: Op, first: tuple[int, Reply | None] | None = None) -> Any:
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
                if value is None:
                    value = self._io(action)
            elif type(action) is Sleep:
                time.sleep(action.seconds)
            else:  # Compute: the memoized function
                value, error = action.run()

    def _io(self, batch: Batch) -> dict[bytes, Reply]:
        """Send every call, then gather replies until all are in or the batch's timeout passes."""
        calls = batch.calls
        if len(calls) == 1:
            call = calls[0]
            reply = self._request(call.node, call.rid, call.frame, batch.timeout)
            return {} if reply is None else {call.rid: reply}
        state = self._sockets()
        socks = state.reqs
        deadline = time.monotonic() + batch.timeout
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
            remaining = deadline - time.monotonic()
            if (not waiting and not unsent) or remaining <= 0:
                return replies
            # A node not connected may have refused our handshake: it is not waited for, and its monitor wakes us.
            unsent.difference_update([n for n in unsent if state.watches[n].refused()])
            if not waiting and not unsent:
                return replies
            items = [(socks[n], zmq.POLLIN) for n in waiting] + [(socks[n], zmq.POLLOUT) for n in unsent]
            items += [(state.watches[n].socket, zmq.POLLIN) for n in unsent]
            for sock, events in zmq.zmq_poll(items, int(remaining * 1000) + 1):
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

    def _request(self, node: int, rid: bytes, frame: bytes, timeout: float) -> Reply | None:
        """One request on this thread's REQ to ``node``: send, then a receive bounded by RCVTIMEO (no poll call)."""
        try:
            state = self._local.sockets
        except AttributeError:  # this thread's first call
            state = self._sockets()
        sock = state.reqs[node]
        wait_ms = _wait_ms(timeout)
        try:
            send_frame(sock, frame, NOBLOCK)
        except zmq.Again:  # not connected (yet, or any more): wait for it within the timeout
            deadline = time.monotonic() + timeout
            if not wait_writable(sock, state.watches[node], wait_ms):  # (a refused handshake ends it at once)
                return None
            send_frame(sock, frame, NOBLOCK)
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
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

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[Any]:
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


def _wait_ms(timeout: float) -> int:
    """A timeout in seconds as a receive timeout in ms (rounded up, never 0: that would not wait)."""
    return int(timeout * 1000) + 1


def _req_reply(reply: bytes, rid: bytes) -> Reply | None:
    """``(status, body)`` of the reply read off a REQ for request ``rid``, or None if it is not one."""
    parsed = parse_reply(reply)  # logs what is wrong with it
    return parsed[1] if parsed is not None and parsed[0] == rid else None
