"""The cache client's logic, sans-I/O: keys and values, routing over the ring, failover, rejoin invalidation.

Every command is a generator that yields I/O actions (:class:`Batch`, :class:`Sleep`, :class:`Compute`) and
gets their outcome back; the sync runner (``client.py``) and the asyncio runner (``aio.py``) perform them.
The public methods live here, once: each returns ``self._run(generator)``, which is the value for the sync
client and a coroutine for the asyncio one (:class:`command` tells a type checker so). The one fast path,
fenced here and in the runners' ``_get_fast``: a ``get`` while every node is alive and each key has one copy
skips its generator (:meth:`ClientCore.fast_get` gives the key's request frame, made once; the runner sends it
and reads a hit or a miss with :meth:`ClientCore.fast_value`); any other outcome is handed to the generator
as its first request's reply. docs/performance.md says why.

Membership (``service=``): the ring holds the service's nodes that are up; a client applies a change between
calls (:meth:`ClientCore.follow`, one version compare per call; nothing else on the get path): it rebuilds the
ring and forgets the key memo; the node table only grows, so what a command in flight holds stays valid.

No stale read after a node returns (the bookkeeping is in ``health.py``): while a node is dead, every key
this client writes or deletes that the node would have owned is remembered as a *hint*; so is a write that
timed out on the node when the client gives up on it, as that write may still land there. Before the node
serves again, the first request to it is preceded, on the same connection, by ``delete_many(hints)``
(``flush_all`` when the hints overflowed or the node missed a flush), so what it held for those keys is gone
before anything is read from it. A node that leaves the service (maintenance, down, expired) is *away*: every
key this client writes that the node comes before in the key's order over every node this client has known is
hinted for it, and its return is a rejoin like a dead node's. What was written in a hinted node's place is
recorded per node that took it (:meth:`ClientCore._stood_in`); once the node has rejoined, those nodes delete
it before they serve again (:meth:`ClientCore._displaced`), so no later leave exposes it. A node new to the
client after the client's first write is flushed before it serves: it may hold copies older than this client's
writes. It is also *late*, for good: the nodes it took keys from keep this client's older copies of them, so
the keys written to it are recorded, and the nodes that would serve them in its place delete them before they
next serve (:meth:`ClientCore._release_late`) whenever any node leaves or is given up on as dead, and in batches.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeAlias, TypeVar, overload

import mmh3

from zmqkit.checks import DEFAULT, Default, check_int, check_number, check_timeout
from zmqkit.codecs import AutoCodec, Codec, PickleCodec, get_codec, unpack
from zmqkit.endpoints import parse_endpoints
from zmqkit.errors import AuthenticationFailed, ConfigurationError, NodeUnavailable, ProtocolError, RemoteError
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, resolve_options

from .actions import Batch, Call, Compute, Op, Reply, Sleep
from .health import Health, Late, NodeHealth
from .keys import Key, canonical, key_bytes
from .protocol import GET_OPCODE, HEADER, Status, encode_request, pack_list, u32, u64, unpack_list
from .ring import DEFAULT_VNODES, HashRing
from .store import MAX_KEY, TooLarge, check_ttl, parse_size

if TYPE_CHECKING:
    from zmqkit.patterns.presence.fabric import FabricLike, Members

__all__ = ["ClientCore", "Awaiting", "Blocking", "command", "map_op", "REQ_RID", "ReqGet", "Timeout", "Value"]

log = logging.getLogger(__name__)

_OK, _MISS = Status.OK, Status.NOT_FOUND
_ERRORS = frozenset({Status.BAD_REQUEST, Status.TOO_LARGE, Status.NOT_A_NUMBER, Status.SERVER_ERROR})
_CODEC_BYTE = [bytes([i]) for i in range(256)]
_pack_rid = struct.Struct(">I").pack

Value: TypeAlias = "bytes | str | int | float | bool | list[Any] | dict[Any, Any] | tuple[Any, ...] | None"
"""What a cached value may be: what the codecs carry (bytes as is; JSON or msgpack; pickle's objects come back
as what they are: cast them)."""
Timeout: TypeAlias = "float | Default | None"
"""A call's ``timeout=``: seconds, None for no limit, or DEFAULT for the client's own."""

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")


class Blocking:
    """Marks a runner whose commands return their value (see :class:`command`)."""


class Awaiting:
    """Marks a runner whose commands return a coroutine of their value (see :class:`command`)."""


if TYPE_CHECKING:

    class command(Generic[P, T]):
        """A public command, written once: a type checker sees it return ``T`` on a :class:`Blocking` runner and
        ``Coroutine[Any, Any, T]`` on an :class:`Awaiting` one (so a missing ``await`` is flagged)."""

        def __init__(self, fn: Callable[Concatenate[Any, P], T]) -> None: ...

        @overload
        def __get__(self, obj: None, owner: Any) -> Callable[Concatenate[Any, P], T]: ...

        @overload
        def __get__(self, obj: Awaiting, owner: Any) -> Callable[P, Coroutine[Any, Any, T]]: ...

        @overload
        def __get__(self, obj: Blocking, owner: Any) -> Callable[P, T]: ...

        def __get__(self, obj: Any, owner: Any) -> Any: ...

else:

    def command(fn):
        """At run time the method itself (no wrapper on the call path)."""
        return fn


# A REQ's gets may all carry this request id: libzmq (REQ_CORRELATE) matches a reply to its request, so a get's
# frame can be made once per key instead of once per call.
REQ_RID = b"\x00\x00\x00\x00"
# A get's frame (with REQ_RID), its node's index, its node's health, and the key's bytes.
ReqGet = tuple[bytes, int, NodeHealth, bytes]
_REQ_GETS_MAX = 4096  # keys whose ReqGet is remembered; the memo starts over when it is full


class _Fixed:
    """The membership of a static client: it never changes."""

    version = 0

    def current(self) -> tuple[int, dict[str, str]]:
        return 0, {}

    def refusal(self) -> None:
        return None


def _endpoint_weights(endpoints: Any, service: str | None) -> dict[str, int]:
    if service is not None:
        if endpoints is not None:
            raise ConfigurationError(f"give endpoints or service={service!r}, not both (endpoints: {endpoints!r})")
        return {}
    if endpoints is None:
        raise ConfigurationError("no cache nodes: give endpoints, or service= (and fabric=) to find them")
    if isinstance(endpoints, Mapping):
        eps = parse_endpoints(list(endpoints))
        return dict(zip(eps, endpoints.values(), strict=True))
    return dict.fromkeys(parse_endpoints(endpoints), 1)


class ClientCore:
    """State and commands shared by the sync and asyncio cache clients (see the module docstring)."""

    def __init__(
        self,
        endpoints: str | Iterable[str] | Mapping[str, int] | None = None,
        *,
        service: str | None = None,
        fabric: FabricLike = None,
        timeout: float | None = 1.0,
        retries: int = 1,
        dead_timeout: float = 10.0,
        replicas: int = 1,
        codec: str | Codec = "auto",
        max_item: int | str | None = None,
        vnodes: int = DEFAULT_VNODES,
        max_hints: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        weights = _endpoint_weights(endpoints, service)
        self.timeout = check_timeout(timeout)
        check_int("retries", retries, 0)
        check_number("dead_timeout", dead_timeout, 0)
        check_int("replicas", replicas, 1)
        check_int("max_hints", max_hints, 0)
        if service is None and replicas > len(weights):
            raise ConfigurationError(f"bad replicas {replicas!r}: only {len(weights)} node(s) given")
        # The ring holds the nodes up now (all of a static list); the node table (health, endpoints) every node
        # this client has known, in the order it learnt of them; known_ring is the ring over all of them.
        self.ring = HashRing(weights, vnodes=vnodes)
        self.known_ring = self.ring
        self.vnodes = vnodes
        self.endpoints = list(weights)
        self.health = Health(
            self.endpoints, retries=retries, dead_timeout=float(dead_timeout), max_hints=max_hints, clock=clock
        )
        self.dead_timeout = float(dead_timeout)
        self.replicas = replicas
        self.options = resolve_options(options, curve)
        # None: each node's own limit holds (it refuses a bigger value with TOO_LARGE); a size: refused here too.
        self.max_item = None if max_item is None else parse_size(max_item)
        # Without a limit of its own, the client still refuses what no node could receive (a message above the
        # sockets' MAXMSGSIZE would cost the connection, not get an answer).
        frame_max = self.options.max_msg_size - MAX_KEY - 64 if self.options.max_msg_size > 0 else 2**62
        self._max_payload = (self.max_item or frame_max) - 1
        self.max_hints = max_hints
        self.codec = get_codec(codec)
        fallback = self.codec.fallback if isinstance(self.codec, AutoCodec) else self.codec
        self.allow_pickle = isinstance(fallback, PickleCodec)
        self.clock = clock
        self._rids = itertools.count(1)
        self.req_gets: dict[Key, ReqGet] = {}  # see _req_get
        self.wrote = False  # whether this client has written yet (nodes new after that are flushed first)
        self.service = service
        self.members: Members | _Fixed = _Fixed()
        self.applied = 0  # the membership version the ring is built on
        self._follow_lock = threading.Lock()
        self._setup()
        if service is not None:
            self._join(service, fabric)

    def _join(self, service: str, fabric: FabricLike) -> None:
        """Follow ``service`` on ``fabric``: wait (up to the client's timeout) for what the fabric knows of it,
        so that the first ring holds every node up, then build it."""
        from zmqkit.patterns.presence.fabric import Members

        self.applied = -1
        self.members = members = Members(fabric, service)
        if not members.wait_synced(self.timeout):
            log.warning("no fabric server of %s answered for %r yet", ", ".join(members.endpoints), service)
        self.follow()

    def follow(self) -> None:
        """Apply the service's membership if it changed since the ring was built (a runner calls this between
        calls: ``members.version != applied``)."""
        with self._follow_lock:
            version, statuses = self.members.current()
            if version == self.applied:
                return
            up = sorted(ep for ep, status in statuses.items() if status == "up")
            added, released = self.health.follow(up, suspect_new=self.wrote)
            if added:
                self.endpoints.extend(node.endpoint for node in added)
                self.known_ring = HashRing(self.endpoints, vnodes=self.vnodes)
            ring = HashRing(up, vnodes=self.vnodes)
            # Marked before the ring is published: a reader that sees the new ring (read before its health
            # check, as _route and fast_get do) sees the marks too.
            for node, written in released:
                self._release_late(node, written)
            self.ring = ring
            self.req_gets = {}  # routes of the old ring
            self.applied = version
        if added:
            self._nodes_added()

    def _nodes_added(self) -> None:
        """The node table grew (``self.endpoints``): a runner that opens its sockets up front opens theirs."""

    def node_for(self, key: Key) -> str:
        """The endpoint of the node that owns ``key`` now (its first copy); NodeUnavailable when none is up."""
        if self.members.version != self.applied:
            self.follow()
        ring = self.ring
        if not len(ring):
            raise self._nobody_up()
        return ring.get_node(self.key_bytes(key))

    def _nobody_up(self) -> Exception:
        """The error for an empty ring: the fabric's refusal of our CURVE keys when that is why, else
        NodeUnavailable."""
        refused = self.members.refusal()
        if refused is not None:
            return refused
        where = f" of service {self.service!r}" if self.service is not None else ""
        return NodeUnavailable(f"no cache node{where} is up ({len(self.endpoints)} known, none on the ring)")

    def _close_members(self) -> None:
        """Stop following the service (the runners' close)."""
        members, self.members = self.members, _Fixed()
        self.applied = 0
        if not isinstance(members, _Fixed):
            members.close()

    def _setup(self) -> None:
        """The runner's own state, made last in ``__init__`` (so the runners keep this explicit signature)."""

    def _run(self, op: Generator[Any, Any, T]) -> T:
        """Drive ``op``: its result (an awaitable of it on an :class:`Awaiting` runner, as :class:`command` says)."""
        raise NotImplementedError  # the runner's job

    def _wait(self, timeout: Timeout) -> float | None:
        """A call's ``timeout=`` in seconds (None: no limit)."""
        return self.timeout if timeout is DEFAULT else check_timeout(timeout)

    def refused(self, node: int) -> AuthenticationFailed | None:
        """Whether ``node`` refused our CURVE handshake (the runner reads its sockets' monitors); asked only when a
        node did not answer, so a refused one is reported as such, not as down."""
        return None

    def _check_refused(self, node: int) -> None:
        error = self.refused(node)
        if error is not None:
            raise error

    # -- keys and values -----------------------------------------------------------------------------------

    key_bytes = staticmethod(key_bytes)  # the one key encoding (keys.py): str, bytes, int, tuple

    def encode_value(self, key: bytes, value: Value) -> bytes:
        codec_id, payload = self.codec.pack(value)
        if len(payload) > self._max_payload:
            limit = self.max_item or f"{self._max_payload + 1} (what a socket takes)"
            raise TooLarge(f"value for key {key[:60]!r} is {len(payload)} bytes; the max item size is {limit}")
        return _CODEC_BYTE[codec_id] + payload

    def decode_value(self, frame: bytes) -> Value:
        if frame[0] == 0:
            return frame[1:]  # bare bytes: no codec round trip
        return unpack(frame[0], frame[1:], allow_pickle=self.allow_pickle)

    @staticmethod
    def _ttl(ttl: float) -> bytes:
        return u32(check_ttl(ttl))

    # -- routing -------------------------------------------------------------------------------------------

    def next_rid(self) -> bytes:
        """A new request id (4 bytes)."""
        return _pack_rid(next(self._rids) & 0xFFFFFFFF)

    def _call(self, node: int, command: bytes, args: list[bytes], items: list[int], rejoin: bool = False) -> Call:
        rid = self.next_rid()
        return Call(node, rid, encode_request(rid, command, args), items, rejoin)

    def merge_gets(self, node: int, keys: list[bytes]) -> Call:
        """One request to ``node`` for several single-key gets (auto-pipelining): a get_many, or a get if alone."""
        if len(keys) == 1:
            return self._call(node, b"get", keys, [])
        return self._call(node, b"get_many", [pack_list(keys)], [])

    @staticmethod
    def unmerge_gets(reply: Reply | None, count: int) -> list[Reply | None]:
        """Each get's own reply out of the reply to ``merge_gets`` for ``count`` keys."""
        if count == 1:
            return [reply]
        if reply is None or reply[0] != _OK:
            return [reply] * count
        try:
            values = unpack_list(reply[1], "get_many reply")
        except ProtocolError as exc:
            log.warning("dropped a malformed get_many reply: %s", exc)
            return [None] * count
        if len(values) != count:
            return [None] * count  # a node that answers for other keys than asked is not answering
        return [(_OK, f) if f else (_MISS, b"") for f in values]

    def _route(
        self,
        keys: list[bytes],
        build: Callable[[list[int]], tuple[bytes, list[bytes]]],
        split: Callable[[Reply, list[int]], Iterable[tuple[int, Reply]]] | None,
        *,
        write: bool,
        timeout: Timeout,
        answered: tuple[int, Reply | None] | None = None,
    ) -> Generator[Batch, dict[bytes, Reply], dict[int, Reply]]:
        """Send each key to its node(s) in parallel, fail over, and return ``{key index: Reply}``.

        ``build(indexes)`` gives one node's (command, args); ``split`` cuts a multi-key reply per key.
        Writes go to ``replicas`` distinct nodes; reads try the next replica on a miss. ``answered`` =
        (node, reply or None) is the outcome of a one-key request the fast path already made: it answers the
        first request when that goes to the same node.
        """
        if self.members.version != self.applied:
            self.follow()
        if write and not self.wrote and len(self.ring):
            with self._follow_lock:  # any membership change applied from now on sees it: its new nodes are late
                self.wrote = True
        # Read before the health check: follow() marks the nodes that must rejoin before it publishes a ring.
        ring = self.ring
        wait = self._wait(timeout)
        health = self.health
        nodes = health.nodes
        hinted: dict[int, list[NodeHealth]] | None = None  # writes: key index -> nodes hinted for it
        if write and health.away:
            hinted = self._hint_away(keys)
        out: dict[int, Reply] = {}
        given_up: list[tuple[int, int]] = []  # (key index, node) pairs the fast path gave up on
        if health.healthy and self.replicas == 1:
            # The common case, kept lean: every node alive, one copy of each key; no failover bookkeeping.
            owner, get_node = health.by_endpoint, ring.get_node
            if len(keys) == 1:
                calls: list[Call] = [self._call(owner[get_node(keys[0])].index, *build([0]), [0])]
            else:
                groups: dict[int, list[int]] = {}
                for i, key in enumerate(keys):
                    groups.setdefault(owner[get_node(key)].index, []).append(i)
                calls = [self._call(index, *build(items), items) for index, items in groups.items()]
            if hinted:
                self._stood_in(calls, hinted, keys)
            if write and health.late:
                self._wrote_late(calls, keys)
            if answered is not None and len(calls) == 1 and calls[0].node == answered[0]:
                replies = {} if answered[1] is None else {calls[0].rid: answered[1]}
            else:
                replies = yield Batch(calls, wait)
            pending: list[int] = []
            for call in calls:
                node = nodes[call.node]
                reply = replies.get(call.rid)
                if reply is None:
                    self._check_refused(call.node)
                    if self._failed(node, [keys[i] for i in call.items] if write else []):
                        given_up += [(i, call.node) for i in call.items]
                        if write:
                            hinted = _add_hinted(hinted, call.items, node)
                    pending += call.items
                    continue
                if node.failures:
                    health.answered(node)
                if split is None:
                    out[call.items[0]] = reply
                else:
                    out.update(split(reply, call.items))
            if not pending:
                return out
        else:
            pending = list(range(len(keys)))
        need = [self.replicas if write else 1] * len(keys)
        for i in out:
            need[i] = 0
        tried: list[set[int]] = [set() for _ in keys]
        for i, index in given_up:
            tried[i].add(index)
        while pending:
            now = self.clock()
            groups = {}
            for i in pending:
                chosen = 0
                for endpoint in self.ring.iter_nodes(keys[i]):
                    node = health.by_endpoint[endpoint]
                    if node.index in tried[i]:
                        continue
                    if not health.usable(node, now):
                        if write:
                            health.hint(node, keys[i])
                            hinted = _add_hinted(hinted, [i], node)
                        continue
                    groups.setdefault(node.index, []).append(i)
                    chosen += 1
                    if chosen >= need[i]:
                        break
                if not chosen and i not in out:
                    if not len(self.ring):
                        raise self._nobody_up()
                    raise NodeUnavailable(
                        f"no cache node answers for key {keys[i][:60]!r} (tried {len(tried[i])} of "
                        f"{len(self.ring)}; the others are marked dead for up to {self.dead_timeout:g}s)"
                    )
            calls = []
            sent: dict[int, tuple[bytes, list[bytes]]] = {}  # rejoin requests, by node
            for index, items in groups.items():
                node = nodes[index]
                if node.dead_until is not None:
                    request = health.rejoin_request(node)
                    if request is not None:
                        sent[index] = request
                        args = [pack_list(request[1])] if request[1] else []
                        calls.append(self._call(index, request[0], args, [], rejoin=True))
                command, args = build(items)
                calls.append(self._call(index, command, args, items))
            if hinted:
                self._stood_in(calls, hinted, keys)
            if write and health.late:
                self._wrote_late(calls, keys)
            replies = yield Batch(calls, wait)
            pending = []
            # A returning node serves only after its invalidation went through (it ran first: same connection).
            not_rejoined = {c.node for c in calls if c.rejoin and replies.get(c.rid, (-1,))[0] != _OK}
            for call in calls:
                if call.rejoin:
                    continue
                node = nodes[call.node]
                reply = replies.get(call.rid)
                if reply is None or call.node in not_rejoined:
                    self._check_refused(call.node)
                    if self._failed(node, [keys[i] for i in call.items] if write else []):
                        for i in call.items:
                            tried[i].add(call.node)
                        if write:
                            hinted = _add_hinted(hinted, call.items, node)
                    pending += call.items
                    continue
                if node.dead_until is not None:
                    self._displaced(node, health.rejoined(node, sent.get(call.node)))
                else:
                    health.answered(node)
                for i, result in split(reply, call.items) if split is not None else ((call.items[0], reply),):
                    tried[i].add(call.node)
                    if write:
                        out.setdefault(i, result)
                        need[i] -= 1
                    elif result[0] == _MISS and self.replicas > 1 and len(tried[i]) < self.replicas:
                        out[i] = result
                        pending.append(i)
                    else:
                        out[i] = result
            # A write that reached some nodes but not all asks for the missing copies only.
            pending = [i for i in dict.fromkeys(pending) if not (write and need[i] <= 0)]
        return out

    def _hint_away(self, keys: list[bytes]) -> dict[int, list[NodeHealth]] | None:
        """Hint each written key to every away node that comes before the nodes it is written to, in the key's
        order over every node this client has known: the nodes that may own it again when they return.
        Returns ``{key index: the nodes hinted}``."""
        health = self.health
        if all(node.flush and node.stand_ins is None for node in health.away):
            return None  # each will be flushed on its return, and every other node too: nothing to remember
        by_endpoint, replicas = health.by_endpoint, self.replicas
        hinted: dict[int, list[NodeHealth]] = {}
        for i, key in enumerate(keys):
            copies = 0
            for endpoint in self.known_ring.iter_nodes(key):
                node = by_endpoint[endpoint]
                if node.away:
                    health.hint(node, key)
                    hinted.setdefault(i, []).append(node)
                elif node.dead_until is None:
                    copies += 1
                    if copies >= replicas:
                        break
        return hinted

    def _stood_in(self, calls: list[Call], hinted: dict[int, list[NodeHealth]], keys: list[bytes]) -> None:
        """Record, for each node hinted for a key, the nodes the key is written to in its place."""
        written: dict[tuple[NodeHealth, int], list[bytes]] = {}
        for call in calls:
            if not call.rejoin:
                for i in call.items:
                    for node in hinted.get(i, ()):
                        written.setdefault((node, call.node), []).append(keys[i])
        for (node, target), stood in written.items():
            self.health.stood_in(node, target, stood)

    def _failed(self, node: NodeHealth, keys: list[bytes]) -> bool:
        """:meth:`Health.failed`; when a node is given up on as dead, the late nodes hand back their keys before
        reads fail over (see :meth:`_release_late`)."""
        dead = self.health.failed(node, keys)
        if dead and self.health.late:
            for late, written in self.health.take_all_late():
                self._release_late(late, written)
        return dead

    def _wrote_late(self, calls: list[Call], keys: list[bytes]) -> None:
        """Record the keys written to late nodes, each with the other nodes it went to (see the module
        docstring); hand back what is due."""
        nodes = self.health.nodes
        if not any(nodes[call.node].late for call in calls):
            return
        targets: dict[int, list[int]] = {}  # key index -> the nodes this batch writes it to
        for call in calls:
            if not call.rejoin:
                for i in call.items:
                    targets.setdefault(i, []).append(call.node)
        for call in calls:
            node = nodes[call.node]
            if node.late and not call.rejoin:
                written = {keys[i]: tuple(t for t in targets[i] if t != call.node) for i in call.items}
                due = self.health.wrote_late(node, written)
                if due is None or due:
                    self._release_late(node, due)

    def _release_late(self, late: NodeHealth, written: Late) -> None:
        """The keys written to ``late`` (``{key: the other nodes that took the write}``, from
        :meth:`Health.take_all_late`): each node that may serve one once ``late`` or a node that took the write
        with it is gone, and may keep this client's copy from before ``late`` joined, deletes it before it next
        serves. That is every node after ``late`` in the key's order over all known nodes, except those that
        took the write, up to ``replicas`` nodes up that are not late (a late one's own departure would not hand
        the key back); nodes away or dead on the way delete it when they return. (Nodes before ``late`` that
        missed the write were hinted for it when it was made.) With ``None`` (not listed), every other node is
        flushed."""
        health = self.health
        if written is None:
            health.flush_others(late)
            return
        by_endpoint, replicas = health.by_endpoint, self.replicas
        stale: dict[NodeHealth, list[bytes]] = {}
        for key, took in written.items():
            passed = 0
            after = False
            for endpoint in self.known_ring.iter_nodes(key):
                node = by_endpoint[endpoint]
                if node is late:
                    after = True
                    continue
                if not after or node.index in took:
                    continue
                stale.setdefault(node, []).append(key)
                if not node.away and node.dead_until is None and not node.late:
                    passed += 1
                    if passed >= replicas:
                        break
        for node, held in stale.items():
            health.stale(node, held)

    def _displaced(self, back: NodeHealth, stand_ins: dict[int, set[bytes]] | None) -> None:
        """``back`` serves again: the copies written in its place (``stand_ins``, from ``Health.rejoined``) go
        stale once the client writes those keys to it, and would be read if it left again. Each node holding
        them deletes them before it serves again, unless it still is one of the key's nodes (later writes reach
        it too); with ``None`` (too many to list), every other node is flushed."""
        health = self.health
        if stand_ins is None:
            health.flush_others(back)
            return
        for index, stood in stand_ins.items():
            node = health.nodes[index]
            health.stale(node, [key for key in stood if node.endpoint not in self._owners(key)])

    def _owners(self, key: bytes) -> list[str]:
        """The nodes a write of ``key`` goes to on the current ring."""
        return list(itertools.islice(self.ring.iter_nodes(key), self.replicas))

    def _one(
        self,
        key: Key,
        command: bytes,
        args: Callable[[bytes], list[bytes]],
        write: bool,
        timeout: Timeout,
        answered: tuple[int, Reply | None] | None = None,
    ) -> Generator[Batch, dict[bytes, Reply], Reply]:
        """One key, one command: ``(status, body)``, errors raised."""
        k = self.key_bytes(key)
        arguments = args(k)
        build = lambda _items: (command, arguments)  # noqa: E731
        out = yield from self._route([k], build, None, write=write, timeout=timeout, answered=answered)
        reply = out[0]
        self._raise_for(reply, k)
        return reply

    @staticmethod
    def _raise_for(reply: Reply, key: bytes) -> None:
        status = reply[0]
        if status in _ERRORS:
            message = reply[1].decode(errors="replace") or "no message"
            if status == Status.TOO_LARGE:
                raise TooLarge(message)
            name = Status(status).name if status in Status.__members__.values() else str(status)
            raise RemoteError(name, message)

    # -- the fast path: a get that skips its generator (the runners' _get_fast) -------------------------------

    def fast_get(self, key: Key) -> ReqGet | None:
        """The key's get as one REQ request to its node (see :meth:`_req_get`) while a get may skip its generator:
        one copy per key, every node alive; else None."""
        if self.members.version != self.applied:
            self.follow()
        # Both read before the health check: follow() marks the nodes that must rejoin before it publishes them.
        memo, ring = self.req_gets, self.ring
        if self.replicas != 1 or not self.health.healthy:
            return None
        kind = type(key)
        route = memo.get(key) if kind is str or kind is bytes or kind is int else None
        return self._req_get(key, ring, memo) if route is None else route

    def _req_get(self, key: Key, ring: HashRing, memo: dict[Key, ReqGet]) -> ReqGet:
        """A get of ``key`` as one REQ request to its node on ``ring``. Remembered in ``memo`` (the
        :attr:`req_gets` of that ring: a route never outlives its ring) for str, bytes and int keys (a lookup
        checks the exact type first: True equals 1, 1.0 equals 1), so the next get of the key costs a dict
        lookup until the ring changes (:meth:`follow` starts the memo over)."""
        k = self.key_bytes(key)
        node = self.health.by_endpoint[ring.get_node(k)]
        route = (HEADER + REQ_RID + GET_OPCODE + k, node.index, node, k)
        if type(key) is str or type(key) is bytes or type(key) is int:
            if len(memo) >= _REQ_GETS_MAX:
                memo.clear()
            memo[key] = route
        return route

    def fast_value(self, node: int, reply: Reply | None, default: Value) -> tuple[bool, Value]:
        """``(True, value or default)`` from a fast get's reply if it is a hit or a miss; ``(False, None)`` for
        anything else (no answer, an error status): the runner then hands the reply to the get's generator
        (``_get(..., answered=(node, reply))``), where failover and errors are handled."""
        if reply is None or (reply[0] != _OK and reply[0] != _MISS):
            return False, None
        health = self.health.nodes[node]
        if health.failures:
            self.health.answered(health)
        return True, self.decode_value(reply[1]) if reply[0] == _OK else default

    def value_or(self, default: Value, reply: Reply) -> Value:
        """A get's value from its (error-free) reply, or ``default`` on a miss."""
        return self.decode_value(reply[1]) if reply[0] == _OK else default

    # -- commands: generators ------------------------------------------------------------------------------

    def _single(
        self,
        key: Key,
        command: bytes,
        args: Callable[[bytes], list[bytes]],
        write: bool,
        done: Callable[[Reply], T],
        timeout: Timeout,
    ) -> T:
        """Run a one-key command: its result is ``done(reply)``, errors raised first."""
        return self._run(map_op(self._one(key, command, args, write, timeout), done))

    def _get(
        self, key: Key, default: Value, timeout: Timeout, answered: tuple[int, Reply | None] | None = None
    ) -> Generator[Batch, dict[bytes, Reply], Value]:
        """A get's generator; ``answered``: see :meth:`_route`."""
        reply = yield from self._one(key, b"get", _key_only, False, timeout, answered)
        return self.value_or(default, reply)

    def _get_fast(self, key: Key, default: Value, timeout: Timeout) -> Value:
        """:meth:`get` the plain way, through its generator; a runner overrides this with the fast path."""
        return self._run(self._get(key, default, timeout))

    def _stored(self, value: Value, ttl: float, *extra: bytes) -> Callable[[bytes], list[bytes]]:
        """The arguments of a set-like command (the TTL checked now)."""
        ttl_frame = self._ttl(ttl)
        return lambda k: [k, self.encode_value(k, value), ttl_frame, *extra]

    def _value_and_cas(self, reply: Reply) -> tuple[Value, int | None]:
        if reply[0] != _OK:
            return None, None
        return self.decode_value(reply[1][8:]), int.from_bytes(reply[1][:8], "big")

    def _get_many(self, keys: Iterable[Key], timeout: Timeout) -> Generator[Batch, Any, dict[Key, Value]]:
        originals = list(keys)
        raw = [self.key_bytes(k) for k in originals]
        if not raw:
            return {}
        out = yield from self._route(
            raw,
            lambda items: (b"get_many", [pack_list([raw[i] for i in items])]),
            _split_values,
            write=False,
            timeout=timeout,
        )
        decode = self.decode_value
        hits = [(i, out[i][1]) for i in range(len(raw)) if out[i][0] == _OK]
        return {originals[i]: decode(value) for i, value in hits}

    def _set_many(self, mapping: Mapping[Key, Value], ttl: float, timeout: Timeout) -> Generator[Batch, Any, list[Key]]:
        ttl_frame = self._ttl(ttl)
        raw = [self.key_bytes(k) for k in mapping]
        values = [self.encode_value(k, v) for k, v in zip(raw, mapping.values(), strict=True)]
        if not raw:
            return []

        def build(items: list[int]) -> tuple[bytes, list[bytes]]:
            pairs: list[bytes] = []
            for i in items:
                pairs += (raw[i], values[i])
            return b"set_many", [ttl_frame, pack_list(pairs)]

        out = yield from self._route(raw, build, _split_same, write=True, timeout=timeout)
        for i, reply in out.items():
            self._raise_for(reply, raw[i])
        return [k for i, k in enumerate(mapping) if out[i][0] != _OK]

    def _delete_many(self, keys: Iterable[Key], timeout: Timeout) -> Generator[Batch, Any, int]:
        raw = [self.key_bytes(k) for k in keys]
        if not raw:
            return 0
        build = lambda items: (b"delete_many", [pack_list([raw[i] for i in items])])  # noqa: E731
        out = yield from self._route(raw, build, _split_flags, write=True, timeout=timeout)
        return sum(1 for r in out.values() if r[0] == _OK)

    def _number(self, command: bytes, key: Key, delta: int, timeout: Timeout) -> int | None:
        if not isinstance(delta, int) or isinstance(delta, bool) or not 0 <= delta < 2**64:
            raise ConfigurationError(f"bad delta {delta!r}: expected an integer from 0 to 2**64-1")
        return self._single(key, command, lambda k: [k, u64(delta)], True, _number_of, timeout)

    def _broadcast(self, command: bytes, timeout: Timeout) -> Generator[Batch, Any, dict[str, Reply]]:
        """Send ``command`` to every node; ``{endpoint: Reply}`` of those that answered."""
        if self.members.version != self.applied:
            self.follow()
        nodes = self.health.nodes
        calls = [self._call(n.index, command, [], []) for n in nodes if not n.away]
        replies = yield Batch(calls, self._wait(timeout))
        out = {}
        for call in calls:
            reply = replies.get(call.rid)
            node = nodes[call.node]
            if reply is not None:
                out[node.endpoint] = reply
            elif command == b"flush_all":
                self.health.missed_flush(node)
        if command == b"flush_all":
            for node in self.health.away:
                self.health.missed_flush(node)  # flushed when it returns
        for call in calls:
            if call.rid not in replies:
                self._check_refused(call.node)
        return out

    def _flush_all(self, timeout: Timeout) -> Generator[Batch, Any, int]:
        out = yield from self._broadcast(b"flush_all", timeout)
        missing = [n.endpoint for n in self.health.nodes if not n.away and n.endpoint not in out]
        if missing:
            log.warning("flush_all: %s did not answer; they will be flushed before they serve again", missing)
        return len(out)

    def _stats(self, timeout: Timeout) -> Generator[Batch, Any, dict[str, dict[str, int]]]:
        out = yield from self._broadcast(b"stats", timeout)
        pairs = {ep: unpack_list(r[1], "stats reply") for ep, r in out.items()}
        return {ep: {p[i].decode(): int(p[i + 1]) for i in range(0, len(p) - 1, 2)} for ep, p in pairs.items()}

    def _version(self, timeout: Timeout) -> Generator[Batch, Any, dict[str, str]]:
        out = yield from self._broadcast(b"version", timeout)
        return {ep: r[1].decode() for ep, r in out.items() if r[1]}

    def _memoized(
        self,
        key: bytes,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ttl: float,
        lease: float,
        timeout: Timeout,
    ) -> Op:
        """Get ``key``; on a miss, one caller (the lease holder) computes and stores while the others wait."""
        ttl_frame = self._ttl(ttl)
        lease_frame = u32(max(1, int(lease * 1000)))
        delay = 0.002
        wait = self._wait(timeout)
        give_up = self.clock() + lease + (wait if wait is not None else float("inf"))
        while True:
            status, body = yield from self._one(key, b"lease_get", lambda k: [k, lease_frame], False, timeout)
            if status == _OK:
                return self.decode_value(body)
            if status == Status.LEASED or self.clock() >= give_up:
                token = body if status == Status.LEASED else None
                try:
                    value = yield Compute(fn, args, kwargs)
                except Exception:
                    if token is not None:  # free the lease so a waiter computes instead of waiting it out
                        yield from self._one(key, b"delete", lambda k: [k], True, timeout)
                    raise
                if token is not None:
                    frame = self.encode_value(key, value)
                    yield from self._one(key, b"lease_set", _after_key(frame, ttl_frame, token), True, timeout)
                return value
            yield Sleep(delay)  # Status.WAIT: another process is computing this value
            delay = min(delay * 2, 0.05)

    # -- public commands (values on a Blocking runner, coroutines on an Awaiting one; see ``command``) ---------
    # timeout: seconds for each attempt; None waits without limit; DEFAULT is the client's own ``timeout``.

    @command
    def get(self, key: Key, default: Value = None, *, timeout: Timeout = DEFAULT) -> Value:
        """The value of ``key``, or ``default`` on a miss."""
        return self._get_fast(key, default, timeout)

    @command
    def gets(self, key: Key, *, timeout: Timeout = DEFAULT) -> tuple[Value, int | None]:
        """``(value, cas token)``, or ``(None, None)`` on a miss."""
        return self._single(key, b"gets", _key_only, False, self._value_and_cas, timeout)

    @command
    def get_many(self, keys: Iterable[Key], *, timeout: Timeout = DEFAULT) -> dict[Key, Value]:
        """``{key: value}`` for the keys found; every node involved is asked at once."""
        return self._run(self._get_many(keys, timeout))

    @command
    def set(self, key: Key, value: Value, ttl: float = 0, *, timeout: Timeout = DEFAULT) -> bool:
        """Store ``value`` (TTL in seconds, 0 = never expires); returns True."""
        return self._single(key, b"set", self._stored(value, ttl), True, _true, timeout)

    @command
    def add(self, key: Key, value: Value, ttl: float = 0, *, timeout: Timeout = DEFAULT) -> bool:
        """Store only if ``key`` is absent; True if stored."""
        return self._single(key, b"add", self._stored(value, ttl), True, _reply_ok, timeout)

    @command
    def replace(self, key: Key, value: Value, ttl: float = 0, *, timeout: Timeout = DEFAULT) -> bool:
        """Store only if ``key`` is present; True if stored."""
        return self._single(key, b"replace", self._stored(value, ttl), True, _reply_ok, timeout)

    @command
    def append(self, key: Key, data: bytes | str, *, timeout: Timeout = DEFAULT) -> bool:
        """Add ``data`` after the stored payload; True if the key existed."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return self._single(key, b"append", lambda k: [k, raw], True, _reply_ok, timeout)

    @command
    def prepend(self, key: Key, data: bytes | str, *, timeout: Timeout = DEFAULT) -> bool:
        """Add ``data`` before the stored payload; True if the key existed."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return self._single(key, b"prepend", lambda k: [k, raw], True, _reply_ok, timeout)

    @command
    def cas(self, key: Key, value: Value, cas: int, ttl: float = 0, *, timeout: Timeout = DEFAULT) -> bool | None:
        """Store if the item's cas token is still ``cas``: True stored, False changed since, None missing."""
        if not isinstance(cas, int) or isinstance(cas, bool) or not 0 <= cas < 2**64:
            raise ConfigurationError(f"bad cas token {cas!r}: expected the integer from gets()")
        args = self._stored(value, ttl, u64(cas))
        return self._single(key, b"cas", args, True, _cas_outcome, timeout)

    @command
    def delete(self, key: Key, *, timeout: Timeout = DEFAULT) -> bool:
        """Remove ``key``; True if it was there."""
        return self._single(key, b"delete", _key_only, True, _reply_ok, timeout)

    @command
    def delete_many(self, keys: Iterable[Key], *, timeout: Timeout = DEFAULT) -> int:
        """Remove ``keys`` (one message per node, in parallel); the number that were there."""
        return self._run(self._delete_many(keys, timeout))

    @command
    def set_many(self, mapping: Mapping[Key, Value], ttl: float = 0, *, timeout: Timeout = DEFAULT) -> list[Key]:
        """Store every item (one message per node, in parallel); the keys that were not stored."""
        return self._run(self._set_many(mapping, ttl, timeout))

    @command
    def incr(self, key: Key, delta: int = 1, *, timeout: Timeout = DEFAULT) -> int | None:
        """Add ``delta`` to a stored decimal number (wraps at 2**64); the new value, or None if missing."""
        return self._number(b"incr", key, delta, timeout)

    @command
    def decr(self, key: Key, delta: int = 1, *, timeout: Timeout = DEFAULT) -> int | None:
        """Subtract ``delta``, stopping at 0; the new value, or None if missing."""
        return self._number(b"decr", key, delta, timeout)

    @command
    def touch(self, key: Key, ttl: float, *, timeout: Timeout = DEFAULT) -> bool:
        """Give ``key`` a new TTL; True if it existed."""
        ttl_frame = self._ttl(ttl)
        return self._single(key, b"touch", lambda k: [k, ttl_frame], True, _reply_ok, timeout)

    @command
    def flush_all(self, *, timeout: Timeout = DEFAULT) -> int:
        """Empty every node; the number of nodes that answered (the others are flushed when they return)."""
        return self._run(self._flush_all(timeout))

    @command
    def stats(self, *, timeout: Timeout = DEFAULT) -> dict[str, dict[str, int]]:
        """``{endpoint: {stat: number}}`` for every node that answered."""
        return self._run(self._stats(timeout))

    @command
    def version(self, *, timeout: Timeout = DEFAULT) -> dict[str, str]:
        """``{endpoint: version}`` for every node that answered."""
        return self._run(self._version(timeout))

    @command
    def ping(self, *, timeout: Timeout = DEFAULT) -> dict[str, bytes]:
        """``{endpoint: node id}`` for every node that answered (the id changes when a node restarts)."""
        return self._run(map_op(self._broadcast(b"ping", timeout), lambda out: {ep: r[1] for ep, r in out.items()}))

    def memoize(
        self, ttl: float = 0, *, lease: float = 10.0, timeout: Timeout = DEFAULT
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: cache a function's results by its arguments, computing each one once across processes.

        When many callers miss the same key at once, one gets a lease and computes; the others wait for its
        value (up to ``lease`` seconds, then they compute themselves). The key is the function's name and a hash
        of its arguments' canonical encoding (``keys.canonical``: the same in every process); an argument of
        another type than str, bytes, int, float, bool, None, or tuples, lists, dicts and sets of them raises
        ConfigurationError naming its type.
        """
        self._ttl(ttl)
        check_number("lease", lease, 0, above=True)
        self._wait(timeout)

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            prefix = f"zmqkit.memo:{fn.__module__}.{fn.__qualname__}:"

            def memoized(*args: Any, **kwargs: Any) -> Any:
                # canonical: the same key in every process (a set's repr depends on PYTHONHASHSEED)
                digest = mmh3.hash_bytes(canonical((args, kwargs))).hex()
                key = (prefix[: MAX_KEY - 40] + digest).encode()
                return self._run(self._memoized(key, fn, args, kwargs, ttl, lease, timeout))

            memoized.__wrapped__ = fn  # type: ignore[attr-defined]
            memoized.__name__ = fn.__name__
            memoized.__qualname__ = fn.__qualname__
            memoized.__doc__ = fn.__doc__
            return memoized

        return decorate

    def node_state(self) -> dict[str, str]:
        """``{endpoint: "alive" | "dead" | "rejoining" | "away"}`` as this client sees the nodes now (away: not up
        in the service, so off the ring)."""
        return self.health.state()


def _add_hinted(
    hinted: dict[int, list[NodeHealth]] | None, items: list[int], node: NodeHealth
) -> dict[int, list[NodeHealth]]:
    """``hinted`` (made if None) with ``node`` hinted for each key index in ``items``."""
    if hinted is None:
        hinted = {}
    for i in items:
        hinted.setdefault(i, []).append(node)
    return hinted


def _after_key(*args: bytes) -> Callable[[bytes], list[bytes]]:
    """Arguments: the key, then ``args``."""
    return lambda key: [key, *args]


def map_op(op: Generator[Any, Any, T], fn: Callable[[T], U]) -> Generator[Any, Any, U]:
    """An op whose result is ``fn(op's result)``."""
    result = yield from op
    return fn(result)


def _key_only(key: bytes) -> list[bytes]:
    return [key]


def _true(reply: Reply) -> bool:
    return True


def _reply_ok(reply: Reply) -> bool:
    return bool(reply[0] == _OK)


def _cas_outcome(reply: Reply) -> bool | None:
    """True stored, False changed since, None missing."""
    return True if reply[0] == _OK else False if reply[0] == Status.EXISTS else None


def _number_of(reply: Reply) -> int | None:
    return int.from_bytes(reply[1], "big") if reply[0] == _OK else None


def _split_values(reply: Reply, items: list[int]) -> Iterable[tuple[int, Reply]]:
    """get_many: a list with one item per key, empty on a miss."""
    status, body = reply
    values = unpack_list(body, "get_many reply") if status == _OK else []
    if len(values) != len(items):
        raise ProtocolError(f"get_many reply has {len(values)} values for {len(items)} keys (status {status})")
    return [(i, (_OK, f) if f else (_MISS, b"")) for i, f in zip(items, values, strict=True)]


def _split_same(reply: Reply, items: list[int]) -> Iterable[tuple[int, Reply]]:
    return [(i, reply) for i in items]


def _split_flags(reply: Reply, items: list[int]) -> Iterable[tuple[int, Reply]]:
    """delete_many: one byte per key, 0 deleted and 1 not found."""
    status, flags = reply
    if status != _OK or len(flags) != len(items):
        return _split_same(reply, items)
    return [(i, (flag, b"")) for i, flag in zip(items, flags, strict=True)]
