"""Node health as one cache client sees it: missed answers, dead timers on an injected clock, and the *hints*
that make a returning node forget what changed while it was away (so it never serves a stale value).

With ``service=``, :meth:`Health.follow` applies membership: the node table only grows (a node's index stays
its index, so the runners' sockets and the routes a command holds stay valid), a node that leaves is *away*
(off the ring, its hints kept), and one that comes back rejoins through the same invalidation as a dead one.

What was written in a node's place goes stale when it returns: the nodes that took those writes keep them,
and would serve them if the node left again (after newer writes to it). So a node also records, per node that
stood in for it, the keys written there (:meth:`Health.stood_in`); when it is alive again, :meth:`Health.rejoined`
hands them back, and those nodes are made to delete them before they serve again (:meth:`Health.stale`).

A node new to the client after its first write is *late*, for good: the nodes it took keys from keep this
client's older copies of them, which no record above lists. So the keys written to a late node are recorded,
each with the nodes that took the same write (:meth:`Health.wrote_late`), and handed back whenever any node
leaves or is given up on as dead (the late one, or one that took a write with it: either way the nodes behind
may now be read), and in batches while it stays (:meth:`Health.take_all_late`); the client makes the nodes that
would serve them in their place delete them (:meth:`Health.stale`).

>>> health = Health(["tcp://a:1", "tcp://b:1"], retries=1, dead_timeout=10, max_hints=10_000, clock=clock)
>>> node = health.nodes[0]
>>> health.failed(node, [b"k"]), health.failed(node, [b"k"])     # a retry, then dead; b"k" is hinted
(False, True)
>>> health.rejoin_request(node)                                    # once dead_timeout has passed
(b'delete_many', [b'k'])
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Health", "Late", "NodeHealth"]

log = logging.getLogger(__name__)

# What a late node hands back: {key: indexes of the other nodes that took its latest write}; None: not listed.
Late: TypeAlias = dict[bytes, tuple[int, ...]] | None


class NodeHealth:
    """One node: consecutive missed answers, when it may be tried again, and its hints."""

    __slots__ = (
        "away",
        "dead_until",
        "endpoint",
        "failures",
        "flush",
        "hints",
        "index",
        "late",
        "late_keys",
        "late_written",
        "stand_ins",
        "stood",
    )

    def __init__(self, index: int, endpoint: str) -> None:
        self.index = index
        self.endpoint = endpoint
        self.failures = 0
        self.dead_until: float | None = None  # None: alive; else skipped until then, and rejoining after
        self.hints: set[bytes] = set()  # keys changed elsewhere while it was dead: delete them on rejoin
        self.flush = False  # its data can't be trusted key by key any more: flush it on rejoin
        self.away = False  # not in the service's membership as "up" (gone, expired or in maintenance)
        # Keys written to other nodes in its place, {node index: keys} (None: too many to list); stood: how many.
        self.stand_ins: dict[int, set[bytes]] | None = {}
        self.stood = 0
        # New after the client's first write (see the module docstring): keys written to it since they were last
        # handed back, each with the indexes of the nodes that took the same write.
        self.late = False
        self.late_keys: dict[bytes, tuple[int, ...]] = {}
        self.late_written = False  # written to since they were handed back (what max_hints=0 keeps instead)


class Health:
    """Every node's health, shared by the threads of one client (changes under a lock)."""

    def __init__(
        self, endpoints: list[str], *, retries: int, dead_timeout: float, max_hints: int, clock: Callable[[], float]
    ) -> None:
        self.nodes = [NodeHealth(i, ep) for i, ep in enumerate(endpoints)]
        self.by_endpoint = {n.endpoint: n for n in self.nodes}
        self.retries = retries
        self.dead_timeout = dead_timeout
        self.max_hints = max_hints
        self.clock = clock
        self.healthy = True  # no node is dead or rejoining: callers may take their short path
        self.away: list[NodeHealth] = []  # nodes off the ring (membership): writes hint them
        self.late = False  # some node is late: writes to it are recorded
        self._lock = threading.Lock()

    def follow(self, up: list[str], suspect_new: bool) -> tuple[list[NodeHealth], list[tuple[NodeHealth, Late]]]:
        """Apply membership: ``up`` are the endpoints on the ring now; the others are away. Returns the nodes
        new to this client, and, when a node left, what :meth:`take_all_late` hands back. With ``suspect_new``
        (this client has written), a new node is flushed before it serves: it may hold copies older than this
        client's writes (it may be one that was away before this client started); it is late."""
        with self._lock:
            now = self.clock()
            added = []
            left = False
            for endpoint in up:
                node = self.by_endpoint.get(endpoint)
                if node is None:
                    node = NodeHealth(len(self.nodes), endpoint)
                    self.nodes.append(node)
                    self.by_endpoint[endpoint] = node
                    added.append(node)
                    if suspect_new:
                        node.flush = True
                        node.dead_until = now  # usable at once, through a rejoin
                        node.late = True
                elif node.away:
                    node.away = False
                    if node.flush or node.hints or node.stand_ins != {}:
                        node.dead_until = now
            present = set(up)
            for node in self.nodes:
                if node.endpoint not in present and not node.away:
                    # What it holds is read elsewhere now; its hints stay for its return.
                    node.away = True
                    node.dead_until = None
                    node.failures = 0
                    left = True
            self.away = [n for n in self.nodes if n.away]
            self.late = any(n.late for n in self.nodes)
            self.healthy = bool(up) and all(n.dead_until is None for n in self.nodes)
            return added, self._take_all_late() if left else []

    @staticmethod
    def usable(node: NodeHealth, now: float) -> bool:
        """Alive, or dead long enough to be tried again (rejoining)."""
        return node.dead_until is None or node.dead_until <= now

    def hint(self, node: NodeHealth, key: bytes) -> None:
        """``key`` changed while ``node`` could not hear it."""
        with self._lock:
            self._hint(node, key)

    def _hint(self, node: NodeHealth, key: bytes) -> None:
        if len(node.hints) >= self.max_hints:
            node.flush = True  # too many to list: forget everything instead
            node.hints.clear()
        elif not node.flush:
            node.hints.add(key)

    def stood_in(self, node: NodeHealth, target: int, keys: list[bytes]) -> None:
        """``keys``, hinted for ``node``, were written to node ``target`` in its place (see the module docstring).
        Past ``max_hints`` keys the list is dropped: every other node is flushed when ``node`` is back."""
        with self._lock:
            if node.dead_until is None and not node.away:
                # It came back while this write was in flight: its return has been handled already.
                self._stale(self.nodes[target], keys)
                return
            stand_ins = node.stand_ins
            if stand_ins is None:
                return
            held = stand_ins.setdefault(target, set())
            before = len(held)
            held.update(keys)
            node.stood += len(held) - before
            if node.stood > self.max_hints:
                node.stand_ins = None

    def wrote_late(self, node: NodeHealth, written: dict[bytes, tuple[int, ...]]) -> Late:
        """``written`` (key: the other nodes the write went to) went to ``node``, late. Returns what the client
        must hand back now (see :meth:`take_all_late`): everything when ``node`` is away or given up on as dead (that
        may have been handled while this write was in flight), a batch when its list is half full (so a batch
        fits in the hints of the node that takes it); else ``{}``."""
        with self._lock:
            node.late_written = True
            if self.max_hints:
                node.late_keys.update(written)
            given_up = node.away or not self.usable(node, self.clock())  # not merely rejoining
            if given_up or len(node.late_keys) >= max(1, self.max_hints // 2):
                return self._take_late(node)
            return {}

    def take_all_late(self) -> list[tuple[NodeHealth, Late]]:
        """Hand back what every late node was written since the last time (a node was given up on as dead):
        ``(node, {key: the other nodes that took the write})``, or ``(node, None)`` when it was written to but
        nothing is listed (``max_hints=0``: every other node must be flushed instead)."""
        with self._lock:
            return self._take_all_late()

    def _take_all_late(self) -> list[tuple[NodeHealth, Late]]:
        taken = [(node, self._take_late(node)) for node in self.nodes if node.late and node.late_written]
        return [(node, written) for node, written in taken if written is None or written]

    def _take_late(self, node: NodeHealth) -> Late:
        listed = bool(self.max_hints)
        node.late_written = False
        taken, node.late_keys = node.late_keys, {}
        return taken if listed else None

    def stale(self, node: NodeHealth, keys: list[bytes] | None) -> None:
        """``node`` may hold copies of ``keys`` (None: of anything) older than this client's writes: it deletes
        them (flushes) before it serves again."""
        with self._lock:
            self._stale(node, keys)

    def _stale(self, node: NodeHealth, keys: list[bytes] | None) -> None:
        if keys is None:
            node.flush = True
            node.hints.clear()
        elif keys:
            for key in keys:
                self._hint(node, key)
        else:
            return
        if node.away:
            return  # its return is a rejoin anyway
        if node.dead_until is None:
            node.dead_until = self.clock()  # usable at once, but through a rejoin
        self.healthy = False

    def flush_others(self, node: NodeHealth) -> None:
        """Every node but ``node`` may hold copies older than this client's writes, which keys unknown: each is
        flushed before it serves again."""
        for other in self.nodes:
            if other is not node:
                self.stale(other, None)

    def failed(self, node: NodeHealth, keys: list[bytes]) -> bool:
        """Count a missed answer (to a write of ``keys``); after ``retries`` misses the node is dead for
        ``dead_timeout``. True if it is dead now (callers fail over), False if it should be retried."""
        with self._lock:
            node.failures += 1
            if node.failures <= self.retries and self.usable(node, self.clock()):
                return False  # the retry reaches the node after the lost attempt, if that ever arrives
            # Timed-out writes may still land on the node later: invalidate their keys when it returns.
            for key in keys:
                self._hint(node, key)
            if node.dead_until is None or node.dead_until <= self.clock():
                log.warning("cache node %s is not answering; skipping it for %gs", node.endpoint, self.dead_timeout)
            node.dead_until = self.clock() + self.dead_timeout
            node.failures = 0
            self.healthy = False
            return True

    def answered(self, node: NodeHealth) -> None:
        if node.failures:
            node.failures = 0

    def missed_flush(self, node: NodeHealth) -> None:
        """``node`` did not hear a flush_all: it must be flushed before it serves anything again."""
        self.stale(node, None)

    def rejoin_request(self, node: NodeHealth) -> tuple[bytes, list[bytes]] | None:
        """``(command, args)`` that must reach a returning node before anything else, or None if none is needed."""
        with self._lock:
            if node.flush:
                return b"flush_all", []
            if node.hints:
                return b"delete_many", list(node.hints)
        return None

    def rejoined(self, node: NodeHealth, sent: tuple[bytes, list[bytes]] | None) -> dict[int, set[bytes]] | None:
        """A returning node answered (after ``sent``, the rejoin request, if there was one): it is alive
        unless something new happened meanwhile. Returns what was written in its place once it is alive
        (``{node index: keys}``, None: unknown), else ``{}``; the caller makes those copies :meth:`stale`."""
        released: dict[int, set[bytes]] | None = {}
        with self._lock:
            if sent is not None:
                if sent[0] == b"flush_all":
                    node.flush = False
                node.hints.difference_update(sent[1])
            if not node.flush and not node.hints:
                if node.dead_until is not None:
                    log.info("cache node %s is back", node.endpoint)
                node.dead_until = None
                node.failures = 0
                self.healthy = all(n.dead_until is None for n in self.nodes)
                released, node.stand_ins, node.stood = node.stand_ins, {}, 0
        return released

    def state(self) -> dict[str, str]:
        """``{endpoint: "alive" | "dead" | "rejoining" | "away"}`` now."""
        now = self.clock()
        return {
            n.endpoint: "away"
            if n.away
            else "alive"
            if n.dead_until is None
            else ("dead" if now < n.dead_until else "rejoining")
            for n in self.nodes
        }
