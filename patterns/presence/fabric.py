"""The discovery fabric: services announce themselves by name and clients find them, with no fixed address lists.

A **fabric server** (``zmqkit fabric --bind tcp://*:5557``) is one XPUB socket at one address. Every process
that announces or finds services joins with one :class:`Fabric`: an XSUB socket connected to every fabric server
(several, for redundancy), run by a background thread.

- Announcements go upstream: one frame ``ZKA1`` + a JSON object (see ``docs/wire.md``), sent to every fabric
  server at once and repeated every heartbeat interval.
- A fabric server checks each one, keeps the live table (entries expire after ``misses`` silent intervals) and
  passes it on to the members that subscribed to its service, as two frames ``[_zk.presence.<service>, JSON]``.
  A member that subscribes gets the matching live entries at once.
- Each member keeps its own table with the same expiry, so a fabric server that dies loses nothing: the
  other servers carry the heartbeats, and a member's view outlives a server by design. A member that hears no
  fabric server at all (none connected, or no beat: ``[_zk.fabric, seconds]`` every ``beat`` s) expires
  nothing meanwhile, and gives every entry a fresh window when it hears the fabric again (``hearing.py``).
- After a restart, announcers re-announce as soon as they reconnect, and a fabric server holds the snapshots
  it owes for ``settle`` seconds after it starts, so that they are complete. It does the same when it hears an
  announcement after a silence in which every entry it held expired (its host was cut off, then healed).

Pattern objects use two small parts: :class:`Announcer` (what a server, producer, publisher or cache node
announces: up, maintenance when it leaves, down when it closes) and :class:`Members` (the live instances of one
service, with a version number a driver compares between calls: nothing is added to the per-message path).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any

import zmq

from zmqkit.checks import check_number
from zmqkit.endpoints import parse_endpoint, parse_endpoints
from zmqkit.errors import AuthenticationFailed, Closed, ConfigurationError, ProtocolError, RequestTimeout
from zmqkit.handshake import HandshakeWatch
from zmqkit.refusals import Refusals
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions, attach, make_socket, resolve_options, unbind_all

from .._background import Background
from .base import Changes, Watcher, block
from .beacon import QUERY, BeaconLink, beacon_target, broadcast_addresses, is_beacon
from .hearing import BEAT_TOPIC, Hearing, parse_beat
from .protocol import (
    TOPIC_PREFIX,
    Announcements,
    DirectoryTable,
    Entry,
    body_of,
    check_announcement,
    decode_announcement,
    encode_announcement,
)

__all__ = [
    "ANNOUNCE",
    "ENV_FABRIC",
    "Announcer",
    "Fabric",
    "FabricLike",
    "FabricServer",
    "Members",
    "advertised",
    "fabric_endpoints",
    "use_fabric",
]

log = logging.getLogger(__name__)

ANNOUNCE = b"ZKA1"  # an upstream announcement frame starts with these bytes (never 0 or 1: those subscribe)
ENV_FABRIC = "ZMQKIT_FABRIC"
BEACON_SETTLE = 0.5  # seconds a beacon member waits for the answers to its query before it counts as synced
BEACON_ANSWERS = 10  # answers to beacon queries a member sends a second at most
# Seconds a fabric server that has just started holds back its snapshots: members reconnect within libzmq's
# reconnect backoff (at most 2 s by default: SocketOptions.reconnect_ivl_max_ms) and re-announce at once.
SETTLE = 2.5
MAX_HELD = 10_000  # distinct prefixes held while settling; beyond, a subscription is answered at once
_TOPIC = TOPIC_PREFIX.encode()
_SUBSCRIBE, _UNSUBSCRIBE = b"\x01", b"\x00"
_HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", ""})


def fabric_endpoints(fabric: str | Sequence[str] | None) -> list[str]:
    """The fabric servers' addresses: ``fabric`` (one or a list), else ``$ZMQKIT_FABRIC`` (comma-separated);
    or one ``udp://*:PORT`` for beacons on this segment (no fabric server)."""
    if fabric is None:
        fabric = os.environ.get(ENV_FABRIC, "").strip()
        if not fabric:
            raise ConfigurationError(f"no fabric: pass fabric='tcp://HOST:PORT' (or a list), or set ${ENV_FABRIC}")
    items = [item.strip() for item in fabric.split(",")] if isinstance(fabric, str) else list(fabric)
    if items and all(isinstance(item, str) for item in items) and is_beacon(items):
        return items  # checked by BeaconLink
    return parse_endpoints(fabric)


def _route_address(fabric: Sequence[str]) -> str:
    """This host's address on the route to the first fabric server (or beacon segment): what other hosts reach."""
    for endpoint in fabric:
        if is_beacon([endpoint]):
            host, port = beacon_target(endpoint)
            target = (broadcast_addresses()[0] if host == "*" else host, port)
        else:
            ep = parse_endpoint(endpoint)
            if ep.transport != "tcp":
                continue
            target = (ep.host, ep.port or 9)
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        # A UDP "connect" sends nothing: it only asks the kernel which local address routes to the target.
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            probe.connect(target)
            return str(probe.getsockname()[0])
    return "127.0.0.1"  # an ipc or inproc fabric: every member is on this host


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def _loopback_fabric(endpoint: str) -> bool:
    """Whether only this host's members can be on the fabric server (or beacon segment) at ``endpoint``."""
    if is_beacon([endpoint]):
        return _loopback(beacon_target(endpoint)[0])
    ep = parse_endpoint(endpoint)
    return ep.transport != "tcp" or _loopback(ep.host)


def advertised(bound: str, fabric: Sequence[str], advertise: str | None = None) -> str:
    """The address to announce for a socket bound at ``bound``: ``advertise`` when given; for a bind to every
    interface (``tcp://*:P``, ``0.0.0.0``, ``::``), this host's address on the route to the fabric."""
    if advertise is not None:
        return str(parse_endpoint(advertise))
    ep = parse_endpoint(bound, for_bind=True)
    if ep.transport == "tcp" and _loopback(ep.host) and not all(_loopback_fabric(f) for f in fabric):
        log.warning(
            "announcing %s on a fabric other hosts use (%s): only this host can connect to it; bind tcp://*:PORT "
            "(or give advertise=/--advertise) for the others",
            bound,
            ", ".join(fabric),
        )
    if ep.transport != "tcp" or ep.host not in _WILDCARD_HOSTS:
        return bound
    if ep.port is None:
        raise ConfigurationError(f"cannot announce {bound!r}: announce the real endpoint, after the bind")
    host = _route_address(fabric)
    return f"tcp://[{host}]:{ep.port}" if ":" in host else f"tcp://{host}:{ep.port}"


def _announcement(frame: bytes) -> Any:
    """The JSON body of an upstream frame; ProtocolError when it is not one."""
    if not frame.startswith(ANNOUNCE):
        raise ProtocolError(f"not an announcement (expected {ANNOUNCE!r} first): {frame[:16]!r}")
    return decode_announcement(frame[len(ANNOUNCE) :])


class FabricServer:
    """One fabric server: takes announcements, keeps the live table, tells each member what it subscribed to.

    >>> with FabricServer("tcp://*:5557") as fabric:
    ...     fabric.join()  # until close() from another thread, or Ctrl-C in the CLI
    """

    def __init__(
        self,
        bind: str | Sequence[str] = "tcp://*:5557",
        *,
        misses: float = 3,
        max_entries: int = 100_000,
        beat: float = 1.0,
        settle: float = SETTLE,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``misses``: heartbeats an entry may miss before it expires; ``max_entries`` bounds the table (a
        flood of made-up announcements costs bounded memory); ``beat``: seconds between the beats that tell
        members they still hear the fabric; ``settle``: seconds after the start (and after a silence in which
        every entry expired) during which snapshots are held back, so that members reconnecting after a restart
        are heard first; with ``curve`` only allowed keys can announce."""
        self.beat = check_number("beat", beat, above=True)
        self.settle = check_number("settle", settle)
        self._table = DirectoryTable(misses, clock, max_entries)
        self._clock = clock
        self._settled_at = clock() + self.settle
        self._held: set[bytes] = set()  # prefixes subscribed while settling, answered when it ends
        self._silent_after: float | None = None  # when every entry taken so far will have expired unheard
        self._next_beat = 0.0
        self._xpub = make_socket("xpub", resolve_options(options, curve))  # XPUB_VERBOSER: every subscription
        self._refusals = Refusals()
        self._refusals.watch(self._xpub)  # CURVE keys it turned away, for auth_failures
        self.endpoints = attach(self._xpub, bind, None, "FabricServer")
        self._lock = threading.Lock()
        self.announcements = 0
        self.subscriptions = 0
        self._background = Background("fabric", {self._xpub: self._on_frames}, tick=self._sweep, on_stop=self._unbind)

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def _on_frames(self, frames: list[bytes]) -> None:
        first = frames[0]
        if len(frames) == 1 and first[:1] == _SUBSCRIBE:
            self.subscriptions += 1
            prefix = first[1:]
            if prefix == BEAT_TOPIC:
                self._send_beat()  # a member that (re)connects learns the beat at once
            elif self._clock() < self._settled_at and len(self._held) < MAX_HELD:
                self._held.add(prefix)  # just started: answer once the members that were here have re-announced
            else:
                self._send_matching(prefix)
            return
        if len(frames) == 1 and first[:1] == _UNSUBSCRIBE:
            return
        with self._lock:
            try:
                if len(frames) != 1:
                    raise ProtocolError(f"an announcement is one frame, got {len(frames)}")
                entry = self._table.parse(_announcement(first))
            except (ValueError, ProtocolError, ConfigurationError) as exc:
                self._table.reject(exc)  # counted, logged at a bounded rate, never fatal
                return
            self._table.apply_entry(entry)
            if entry.status != "down" and not self._table.holds(entry):
                return  # refused: the table is full
            self.announcements += 1
            self._settle_after_silence(entry)
        # Heartbeats are passed on too: they keep every member's copy of the entry alive.
        self._send(entry)

    def _settle_after_silence(self, entry: Entry) -> None:
        """If this is the first announcement heard after every entry expired unheard (this server was cut off),
        the members it lost come back over the next heartbeats: settle again, as after a start."""
        now = self._clock()
        if self._silent_after is not None and now >= self._silent_after:
            self._settled_at = max(self._settled_at, now + self.settle)
            log.info("fabric server heard nobody for a whole expiry window; holding snapshots for %gs", self.settle)
        if entry.status != "down":
            self._silent_after = max(self._silent_after or 0.0, entry.expires_at)
        elif not len(self._table):
            self._silent_after = None  # every member left saying so: nothing was lost

    def _send(self, entry: Entry) -> None:
        topic = (TOPIC_PREFIX + entry.service).encode()
        self._xpub.send_multipart([topic, json.dumps(body_of(entry)).encode()])

    def _send_matching(self, prefix: bytes) -> None:
        if not (prefix.startswith(_TOPIC) or _TOPIC.startswith(prefix)):
            return
        with self._lock:
            entries = [e for e in self._table.lookup() if (TOPIC_PREFIX + e.service).encode().startswith(prefix)]
        for entry in entries:
            self._send(entry)
        # The end of the snapshot (an empty body on the subscribed prefix): a member now knows what this server knows.
        self._xpub.send_multipart([prefix, b""])

    def _send_beat(self) -> None:
        self._xpub.send_multipart([BEAT_TOPIC, f"{self.beat:g}".encode()])

    def _sweep(self) -> float:
        with self._lock:
            self._table.expire()
        now = self._clock()
        if self._held and now >= self._settled_at:
            held, self._held = self._held, set()
            for prefix in held:
                self._send_matching(prefix)
        if now >= self._next_beat:
            self._next_beat = now + self.beat
            self._send_beat()
        return min(0.1, self.beat)

    def _unbind(self) -> None:
        # Wait for libzmq to close the listeners, so a server started right after on the same port can bind.
        unbind_all(self._xpub, self.endpoints)

    def lookup(self, service: str | None = None) -> list[Entry]:
        """The server's live table (every service when None), up instances first."""
        with self._lock:
            return self._table.lookup(service)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: announcements taken, malformed ones, entries refused (table full), live entries,
        subscriptions seen and CURVE handshakes refused."""
        with self._lock:
            return {
                "announcements": self.announcements,
                "malformed": self._table.malformed,
                "refused": self._table.refused,
                "entries": len(self._table.lookup()),
                "subscriptions": self.subscriptions,
                "auth_failures": self._refusals.count,
            }

    def join(self, timeout: float | None = None) -> None:
        """Block until the server stops."""
        self._background.join(timeout)

    def close(self) -> None:
        """Stop the thread (it closes the socket); idempotent."""
        self._background.stop()

    def __enter__(self) -> FabricServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FabricServer {self.endpoints}>"


class _ServerLink:
    """A member's link to fabric servers: one XSUB socket connected to all of them (an XSUB sends to all peers)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        options: SocketOptions | None,
        curve: Curve | None,
        on_event: Callable[[int, str], None],
    ) -> None:
        # Not IMMEDIATE: an announcement made before the connection is up waits for it instead of being lost.
        self.socket = make_socket("xsub", resolve_options(options, curve, immediate=False))
        # Read in the thread: which fabric servers refused our keys, and which are connected now.
        self.watch = HandshakeWatch(self.socket, connections=True, on_event=on_event)
        # Every fabric server's beat: while they come, this member knows it hears the fabric (libzmq sends the
        # subscription to each server as it connects, and again after every reconnect).
        self.socket.send(_SUBSCRIBE + BEAT_TOPIC)
        try:
            attach(self.socket, None, endpoints, "Fabric")
        except BaseException:
            self.watch.close()
            raise
        self.owned = (self.watch,)  # closed before the socket it watches

    def send(self, frame: bytes) -> None:
        self.socket.send(frame)

    def subscribe(self, notice: bytes) -> None:
        self.socket.send(notice)


class Fabric:
    """A process's membership of a fabric: announces services and follows the ones it watches.

    Pattern objects take ``fabric=`` as addresses (they then share one Fabric per address list in the process)
    or as a Fabric made here, to set its heartbeat ``interval``, ``misses`` or ``curve`` (a CURVE *client*:
    the fabric servers' public key) once for many objects.

    >>> with Fabric("tcp://fabric1:5557,tcp://fabric2:5557", interval=0.5) as fabric:
    ...     server = Server("tcp://*:6000", handler, announce="thumbs", fabric=fabric)
    """

    # How often (real seconds) the thread looks for expired entries; expiry itself runs on ``clock``.
    sweep_interval = 0.1

    def __init__(
        self,
        fabric: str | Sequence[str] | None = None,
        *,
        interval: float = 1.0,
        misses: float = 3,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = fabric_endpoints(fabric)
        self.interval = check_number("interval", interval, above=True)
        self._announcements = Announcements(os.urandom(8).hex(), self.interval, clock)
        # Connections are followed on fabric servers over tcp or ipc; inproc (and beacons) report none.
        tracked = not is_beacon(self.endpoints) and not any(ep.startswith("inproc://") for ep in self.endpoints)
        self._hearing = Hearing(clock, tracked=tracked)
        self._table = DirectoryTable(misses, clock, horizon=self._hearing.horizon)
        self._changes = Changes()
        self._watchers: dict[str, list[Watcher]] = {}
        self._link: _ServerLink | BeaconLink
        if is_beacon(self.endpoints):
            if curve is not None:
                raise ConfigurationError("udp:// beacons carry no CURVE: use fabric servers for a secured fabric")
            self._link = BeaconLink(self.endpoints)
        else:
            self._link = _ServerLink(self.endpoints, options, curve, self._on_connection)
        self._refused: dict[str, str] = {}
        self._refused_unsure: frozenset[str] = frozenset()
        self.synced = 0  # snapshots received (a fabric server sends one for each subscription)
        self._synced_topics: set[bytes] = set()  # the subscriptions a snapshot has answered
        self._started = clock()
        self._clock = clock
        self._answers: deque[float] = deque(maxlen=BEACON_ANSWERS)  # when this member answered beacon queries
        self._queried = False
        self._references = 0
        self._shared_key: tuple[Any, ...] | None = None
        handlers: dict[Any, Callable[[list[bytes]], None]] = {self._link.socket: self._on_message}
        if tracked and isinstance(self._link, _ServerLink):
            handlers[self._link.watch.socket] = self._link.watch.take  # calls _on_connection
        self._background = Background(
            "fabric-member",
            handlers,
            on_command=self._on_command,
            tick=self._tick,
            on_stop=self._goodbye,
            owned=self._link.owned,
            linger_ms=1000,
        )

    @property
    def closed(self) -> bool:
        return self._changes.closed

    def refused(self) -> dict[str, str]:
        """``{fabric server: why}`` for each fabric server that refused this member's CURVE handshake."""
        with self._changes.lock:
            return dict(self._refused)

    def refusal(self) -> AuthenticationFailed | None:
        """What to raise instead of "nothing found" when every fabric server refused this member's CURVE
        handshake; None while any of them takes it."""
        with self._changes.lock:
            refused, unsure = self._refused, self._refused_unsure
            if not refused or len(refused) < len(self.endpoints):
                return None
            endpoint, reason = next(iter(refused.items()))
        return AuthenticationFailed(endpoint, reason, unsure=endpoint in unsure)

    @property
    def node(self) -> str:
        """This member's id in its announcements."""
        return self._announcements.node

    @property
    def malformed(self) -> int:
        """Messages from fabric servers dropped as malformed."""
        return self._table.malformed

    # --- announcing -------------------------------------------------------------------------------------
    def announce(self, service: str, endpoint: str, status: str = "up", meta: dict[str, Any] | None = None) -> None:
        """Announce ``service`` at ``endpoint`` (again: a change of status or meta); ``down`` withdraws it."""
        fields = check_announcement(service, str(parse_endpoint(endpoint)), status, meta)
        # Checked here, whole (heartbeat fields included), so that what the thread sends later cannot fail.
        encode_announcement({**fields, "interval": self.interval, "node": self._announcements.node})
        self._command(b"announce", json.dumps(fields).encode())

    # --- finding ----------------------------------------------------------------------------------------
    def watch(self, service: str | None, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(event, entry)`` on added/changed/removed/expired instances of ``service`` (None: of
        every service) in the fabric's thread; instances already known are replayed as "added" first, in this
        thread, with the fabric's lock held (a callback must not block). Returns the function that stops it."""
        if service is not None:
            check_announcement(service, "", "up", None)
        service = service or ""
        if not callable(callback):
            raise ConfigurationError(f"bad watch callback {callback!r}: expected a callable")
        with self._changes.lock:
            if self._changes.closed:
                raise self._closed_error()
            callbacks = self._watchers.setdefault(service, [])
            callbacks.append(callback)
            first = len(callbacks) == 1
            # Replayed with the lock held: the fabric's thread cannot apply a change to these entries (and send
            # its event) between the copy and the replay, so a "removed" never comes before a stale "added".
            for entry in self._table.lookup(service or None):
                callback("added", entry)
        if first:
            self._command(b"subscribe", service.encode())

        def unwatch() -> None:
            with self._changes.lock:
                callbacks = self._watchers.get(service, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                last = not callbacks and self._watchers.pop(service, None) is not None
            if last and not self._changes.closed:
                self._command(b"unsubscribe", service.encode())

        return unwatch

    def lookup(self, service: str | None) -> list[Entry]:
        """The live instances of a watched ``service`` (None: of every service watched), up ones first."""
        with self._changes.lock:
            if self._changes.closed:
                raise self._closed_error()
            return self._table.lookup(service)

    def wait_synced(self, timeout: float | None = 5.0) -> bool:
        """Block until a fabric server has sent its snapshot of what this member watches (False on timeout, or
        at once when every fabric server refused our CURVE keys: :meth:`refusal` says why)."""

        def synced() -> bool | None:
            return False if self.refusal() is not None else (bool(self.synced) or None)

        steps = self._changes.steps(synced, timeout, lambda: RequestTimeout(""), self._closed_error())
        try:
            return bool(block(self._changes, steps))
        except RequestTimeout:
            return False

    def synced_steps(self, service: str, timeout: float | None) -> Generator[float | None, None, bool]:
        """A wait, sans-I/O, until a fabric server has sent its snapshot of a watched ``service`` (True), or
        ``timeout`` seconds have passed (False): then this member knows what the fabric knew of it."""
        topic = (TOPIC_PREFIX + service).encode()

        def synced() -> bool | None:
            if self.refusal() is not None:
                return False  # no fabric server will ever answer us: stop waiting now
            with self._changes.lock:
                if topic in self._synced_topics or _TOPIC in self._synced_topics:
                    return True
                # Beacons have no per-service snapshot: every member hears every service once it has settled.
                return True if self.synced and isinstance(self._link, BeaconLink) else None

        try:
            return (yield from self._changes.steps(synced, timeout, lambda: RequestTimeout(""), self._closed_error()))
        except RequestTimeout:
            return False

    def wait_steps(self, service: str, timeout: float | None) -> Generator[float | None, None, Entry]:
        """A wait for an "up" instance of a watched ``service``, sans-I/O (see ``presence.base.Changes.steps``)."""

        def first() -> Entry | None:
            refused = self.refusal()
            if refused is not None:
                raise refused  # every fabric server refused our keys: say so now, not "none found" later
            with self._changes.lock:
                found = self._table.lookup(service, "up")
            return found[0] if found else None

        def not_found() -> Exception:
            return RequestTimeout(f"no instance of {service!r} announced on {', '.join(self.endpoints)}")

        return self._changes.steps(first, timeout, not_found, self._closed_error())

    def wait(self, service: str, timeout: float | None = 10.0) -> Entry:
        """Block until ``service`` has an instance up and return it (watching it meanwhile).

        RequestTimeout after ``timeout`` seconds; Closed if the fabric closes meanwhile.
        """
        unwatch = self.watch(service, lambda event, entry: None)
        try:
            return block(self._changes, self.wait_steps(service, timeout))
        finally:
            unwatch()

    # --- the thread -------------------------------------------------------------------------------------
    def _command(self, kind: bytes, payload: bytes) -> None:
        if self._changes.closed:
            raise self._closed_error()
        self._background.command(kind, payload)

    def _on_command(self, frames: list[bytes]) -> None:
        kind, payload = frames
        if kind == b"announce":
            _, body = self._announcements.announce(json.loads(payload))
            self._link.send(ANNOUNCE + json.dumps(body).encode())
        elif kind == b"subscribe":
            self._link.subscribe(_SUBSCRIBE + _TOPIC + payload)
        else:
            self._link.subscribe(_UNSUBSCRIBE + _TOPIC + payload)
            with self._changes.lock:
                self._synced_topics.discard(_TOPIC + payload)
                # Forget what no watcher follows any more; not what a watcher made since (its replay came from
                # these entries, and without them it would never hear that they expire) nor what another
                # subscription still keeps alive (the wildcard's, or a service's when the wildcard goes).
                watched = self._watchers
                if "" not in watched:
                    for entry in self._table.lookup(payload.decode() or None):
                        if entry.service not in watched:
                            self._table.apply_entry(Entry(entry.service, entry.endpoint, "down"))

    def _on_message(self, frames: list[bytes]) -> None:
        if frames == [QUERY]:  # a beacon member joined: tell it what we announce now
            now = self._clock()
            answers = self._answers  # at most BEACON_ANSWERS a second: a flood of queries costs little
            if len(answers) < BEACON_ANSWERS or now - answers[0] >= 1.0:
                answers.append(now)
                self._announce_all()
            return
        if len(frames) == 2 and frames[0] == BEAT_TOPIC:
            with self._changes.lock:
                try:
                    beat = parse_beat(frames[1])
                except ValueError as exc:
                    self._table.reject(exc)
                    return
                self._heard(beat)
            return
        with self._changes.lock:
            self._heard(None)
        if len(frames) == 2 and not frames[1] and frames[0].startswith(_TOPIC):
            with self._changes.lock:
                self.synced += 1
                self._synced_topics.add(frames[0])
            self._changes.notify()
            return
        with self._changes.lock:
            try:
                if len(frames) == 1 and isinstance(self._link, BeaconLink):
                    body = _announcement(frames[0])
                elif len(frames) == 2 and frames[0].startswith(_TOPIC):
                    body = decode_announcement(frames[1])
                else:
                    raise ProtocolError(f"expected [topic, announcement], got {len(frames)} frame(s)")
                entry = self._table.parse(body)
            except (ValueError, ProtocolError, ConfigurationError) as exc:
                self._table.reject(exc)
                return
            events = self._table.apply_entry(entry)
        self._publish(events)

    def _heard(self, beat: float | None) -> None:
        """A message came from the fabric (under the lock): after a silence, every entry gets a fresh window."""
        if self._hearing.message(beat):
            self._table.renew()

    def _on_connection(self, event: int, endpoint: str) -> None:
        """The socket monitor saw a connection to a fabric server come or go, or a handshake refused."""
        assert isinstance(self._link, _ServerLink)
        if not self._hearing.tracked:
            return
        with self._changes.lock:
            if self._hearing.connected(len(self._link.watch.connected)):
                self._table.renew()  # the fabric is back: announcers have a full window to be heard again
        if event == _HANDSHAKE_SUCCEEDED:
            # A fabric server (re)connected, maybe a restarted one with an empty table: tell it everything now
            # rather than at the next heartbeat, so the snapshot it gives new members is complete.
            self._announce_all()

    def _announce_all(self) -> None:
        for _, body in self._announcements.current():
            self._link.send(ANNOUNCE + json.dumps(body).encode())

    def _tick(self) -> float:
        if isinstance(self._link, _ServerLink):
            refused = self._link.watch.refused()
            if refused or self._refused:
                self._link.watch.warn_new("fabric member")
                with self._changes.lock:
                    changed, self._refused = refused != self._refused, dict(refused)
                    self._refused_unsure = self._link.watch.unsure
                if changed:
                    self._changes.notify()  # a wait for the fabric ends at once when every server refused us
        elif not self.synced:
            # No server says "that is all": a beacon member asks once, and counts as synced once the answers
            # had time to come (they come within milliseconds on one segment; heartbeats cover any lost).
            if not self._queried:
                self._queried = True
                self._link.send(QUERY)
            if self._clock() - self._started >= min(self.interval, BEACON_SETTLE):
                with self._changes.lock:
                    self.synced = 1
                self._changes.notify()
        for _, body in self._announcements.due():
            self._link.send(ANNOUNCE + json.dumps(body).encode())
        with self._changes.lock:
            events = self._table.expire()
        self._publish(events)
        return min(self._announcements.wait(), self.sweep_interval)

    def _publish(self, events: list[tuple[str, Entry]]) -> None:
        if not events:
            return
        self._changes.notify()
        for kind, entry in events:
            with self._changes.lock:
                watchers = [*self._watchers.get(entry.service, ()), *self._watchers.get("", ())]
            for watcher in watchers:
                try:
                    watcher(kind, entry)
                except Exception:
                    log.exception("fabric watcher %r failed", watcher)

    def _goodbye(self) -> None:
        for _, body in self._announcements.withdraw():
            self._link.send(ANNOUNCE + json.dumps(body).encode())

    # --- life -------------------------------------------------------------------------------------------
    def _closed_error(self) -> Closed:
        return Closed(f"Fabric {', '.join(self.endpoints)} is closed")

    def close(self) -> None:
        """Announce ``down`` for everything this member announced, then stop; idempotent."""
        with _SHARED_LOCK:
            if self._shared_key is not None and _SHARED.get(self._shared_key) is self:
                del _SHARED[self._shared_key]
        if self._changes.close():
            self._background.stop()

    def retain(self) -> Fabric:
        """Take a reference (an object that uses this fabric); :meth:`release` gives it back."""
        with _SHARED_LOCK:
            if self._changes.closed:
                raise self._closed_error()
            self._references += 1
        return self

    def release(self) -> None:
        """Give a reference back; a shared Fabric (made from addresses by :func:`use_fabric`) closes with its
        last one, one made by the user stays open until the user closes it."""
        with _SHARED_LOCK:
            self._references -= 1
            key = self._shared_key
            last = self._references <= 0 and key is not None
            if key is not None and last and _SHARED.get(key) is self:
                del _SHARED[key]  # from now on use_fabric makes a new one, never hands out this closing one
        if last:
            self.close()

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Fabric {self.node} {', '.join(self.endpoints)}>"


FabricLike = Fabric | str | Sequence[str] | None
_SHARED: dict[tuple[Any, ...], Fabric] = {}
_SHARED_LOCK = threading.RLock()


def use_fabric(fabric: FabricLike, *, curve: Curve | None = None) -> Fabric:
    """The Fabric an object should use, with a reference taken (give it back with ``release()``).

    A Fabric is used as given; addresses (or None: ``$ZMQKIT_FABRIC``) share one Fabric per address list and
    CURVE setting in this process, made on first use and closed with its last user.
    """
    if isinstance(fabric, Fabric):
        return fabric.retain()
    endpoints = fabric_endpoints(fabric)
    key = (tuple(endpoints), curve, os.getpid())
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None or found.closed:
            found = Fabric(endpoints, curve=curve)
            found._shared_key = key
            _SHARED[key] = found
        return found.retain()


class Announcer:
    """What one object announces: ``service`` at its endpoints, up while it runs.

    ``maintenance()`` when it leaves (clients send it no new work), ``close()`` announces down and releases
    the fabric.
    """

    def __init__(
        self,
        fabric: FabricLike,
        service: str,
        endpoints: Sequence[str],
        *,
        meta: dict[str, Any] | None = None,
        advertise: str | Sequence[str] | None = None,
        curve: Curve | None = None,
    ) -> None:
        check_announcement(service, "", "up", meta)
        self.service = service
        self._meta = dict(meta or {})
        self._fabric = use_fabric(fabric, curve=curve)
        try:
            if advertise is not None:
                self.endpoints = parse_endpoints(advertise)
            else:
                self.endpoints = [advertised(ep, self._fabric.endpoints) for ep in endpoints]
            self._status = ""
            self.up()
        except BaseException:
            self._fabric.release()
            raise

    @property
    def status(self) -> str:
        """What was announced last: up, maintenance or down."""
        return self._status

    def _say(self, status: str) -> None:
        if self._status == "down" or status == self._status:
            return
        self._status = status
        for endpoint in self.endpoints:
            self._fabric.announce(self.service, endpoint, status, self._meta)

    def up(self) -> None:
        """Announce (again) that the service takes work here."""
        self._say("up")

    def maintenance(self) -> None:
        """Announce that this instance is going away: it takes no new work, and finishes what it holds."""
        self._say("maintenance")

    def close(self) -> None:
        """Announce down and release the fabric; idempotent."""
        if self._status == "down":
            return
        with contextlib.suppress(Closed):
            self._say("down")
        self._status = "down"
        self._fabric.release()

    def __repr__(self) -> str:
        return f"<Announcer {self.service} {self._status} {self.endpoints}>"


class Members:
    """The live instances of one service, for a driver to read between calls.

    ``version`` changes with every change; a driver keeps the version it applied and calls :meth:`current`
    only when it differs (one integer compare per call). ``on_change`` (optional) runs in the fabric's thread
    after each change, e.g. to wake an event loop.
    """

    def __init__(
        self,
        fabric: FabricLike,
        service: str,
        *,
        curve: Curve | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        check_announcement(service, "", "up", None)
        self.service = service
        self.version = 0
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}
        self._on_change = on_change
        self._fabric = use_fabric(fabric, curve=curve)
        self.endpoints = self._fabric.endpoints  # the fabric's, for error messages
        self._unwatch: Callable[[], None] | None = None
        self._unwatch = self._fabric.watch(service, self._on_event)

    def _on_event(self, event: str, entry: Entry) -> None:
        with self._lock:
            if event in ("removed", "expired"):
                self._status.pop(entry.endpoint, None)
            else:
                self._status[entry.endpoint] = entry.status
            self.version += 1
        if self._on_change is not None:
            self._on_change()

    def current(self) -> tuple[int, dict[str, str]]:
        """``(version, {endpoint: status})``: status is up or maintenance (gone instances are not listed)."""
        with self._lock:
            return self.version, dict(self._status)

    def up(self) -> list[str]:
        """The endpoints that take new work now, sorted."""
        with self._lock:
            return sorted(ep for ep, status in self._status.items() if status == "up")

    def refusal(self) -> AuthenticationFailed | None:
        """The fabric's :meth:`Fabric.refusal`: why nothing can be found, when every fabric server refused us."""
        return self._fabric.refusal()

    def wait_steps(self, timeout: float | None) -> Generator[float | None, None, Entry]:
        """A wait for an instance up (see :meth:`Fabric.wait_steps`)."""
        return self._fabric.wait_steps(self.service, timeout)

    def wait_synced(self, timeout: float | None) -> bool:
        """Block until a fabric server has sent what it knows of the service (False after ``timeout`` s): then
        :meth:`current` holds every instance the fabric knew, not only the first to arrive."""
        return block(self._fabric._changes, self._fabric.synced_steps(self.service, timeout))

    def close(self) -> None:
        """Stop following the service and release the fabric; idempotent."""
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            with contextlib.suppress(Closed):
                unwatch()
            self._fabric.release()

    def __repr__(self) -> str:
        return f"<Members {self.service} v{self.version} {self._status}>"
