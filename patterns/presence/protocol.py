"""Presence protocol (sans-I/O): announcements, the heartbeat schedule, and the directory table with expiry.

An announcement is a fanout message on topic ``_zk.presence.<service>`` whose JSON body names the service,
its endpoint, its status (up, maintenance, down), free-form meta, the heartbeat interval and the announcing
node. Time comes from an injected monotonic clock, so tests move it by hand.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from zmqkit.checks import check_int
from zmqkit.endpoints import parse_endpoint
from zmqkit.errors import ConfigurationError, ProtocolError

__all__ = [
    "TOPIC_PREFIX",
    "STATUSES",
    "MAX_ANNOUNCEMENT",
    "Entry",
    "Announcements",
    "DirectoryTable",
    "body_of",
    "check_announcement",
    "check_interval",
    "decode_announcement",
    "encode_announcement",
]

log = logging.getLogger(__name__)

TOPIC_PREFIX = "_zk.presence."
STATUSES = ("up", "maintenance", "down")
Clock = Callable[[], float]
MALFORMED_LOG_INTERVAL = 10.0  # seconds between two warnings about malformed announcements


MAX_SERVICE = 255  # bytes of a service name (UTF-8)
MAX_ANNOUNCEMENT = 8192  # bytes of JSON an announcer may send: fits a beacon datagram; bounds a table's memory
MAX_RECEIVED = 65536  # bytes of JSON a receiver takes (a peer's encoder may escape what ours writes as UTF-8)
MAX_INTERVAL = 3600.0  # seconds: a heartbeat interval above this is refused (an entry would outlive its sender)


def check_announcement(service: Any, endpoint: Any, status: Any, meta: Any) -> dict[str, Any]:
    """Raise ConfigurationError on a bad argument; return the announcement's fields."""
    if not isinstance(service, str) or not service or any(c in service for c in " *>") or not _utf8(service):
        raise ConfigurationError(f"bad service name {service!r}: a non-empty name without spaces, '*' or '>'")
    if len(service.encode()) > MAX_SERVICE:
        raise ConfigurationError(f"bad service name {service[:40]!r}...: longer than {MAX_SERVICE} bytes")
    if not isinstance(endpoint, str) or not _utf8(endpoint):
        raise ConfigurationError(f"bad endpoint {endpoint!r} for {service!r}: expected a string")
    if status not in STATUSES:
        raise ConfigurationError(f"bad status {status!r}: expected one of {', '.join(STATUSES)}")
    if meta is not None and not isinstance(meta, dict):
        raise ConfigurationError(f"bad meta {meta!r}: expected a dict of JSON values")
    return {"service": service, "endpoint": endpoint, "status": status, "meta": dict(meta or {})}


def check_interval(interval: Any, error: type[Exception] = ConfigurationError) -> float:
    """A heartbeat interval in seconds: a finite number above 0 and at most :data:`MAX_INTERVAL`."""
    if (
        not isinstance(interval, (int, float))
        or isinstance(interval, bool)
        or not 0 < interval <= MAX_INTERVAL  # NaN fails this too
    ):
        raise error(f"bad heartbeat interval {interval!r}: expected seconds > 0 and <= {MAX_INTERVAL:g}")
    return float(interval)


def decode_announcement(data: bytes) -> Any:
    """The JSON value of an announcement body from a peer; ProtocolError for anything that is not strict JSON
    of at most :data:`MAX_RECEIVED` bytes (NaN and Infinity are not JSON; nesting too deep for the parser is
    refused, not raised)."""
    if len(data) > MAX_RECEIVED:
        raise ProtocolError(f"announcement of {len(data)} bytes: at most {MAX_RECEIVED}")
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"announcement is not JSON: {type(exc).__name__}: {str(exc)[:80]}") from None


def encode_announcement(body: dict[str, Any]) -> bytes:
    """An announcement body as strict JSON; ConfigurationError when it cannot be one, or is too large to send."""
    try:
        data = json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigurationError(f"bad meta {body.get('meta')!r:.80}: not JSON ({exc})") from None
    if len(data) > MAX_ANNOUNCEMENT:
        raise ConfigurationError(
            f"announcement of {body.get('service')!r} is {len(data)} bytes of JSON: at most {MAX_ANNOUNCEMENT} "
            "(keep meta small: it travels in every heartbeat)"
        )
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a lone surrogate does not, and would fail later, on the way out)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """One service instance as the directory sees it."""

    service: str
    endpoint: str
    status: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    node: str = ""
    interval: float = 1.0
    last_seen: float = 0.0
    expires_at: float = 0.0


class Announcements:
    """What a Presence announces, and when each heartbeat is due."""

    def __init__(self, node: str, interval: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.node = node
        self.interval = check_interval(interval)
        self._clock = clock
        self._live: dict[tuple[str, str], dict[str, Any]] = {}
        self._next = 0.0

    def announce(self, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Record an announcement (``down`` forgets it) and return ``(topic, body)`` to publish now."""
        body = {**fields, "interval": self.interval, "node": self.node}
        key = (body["service"], body["endpoint"])
        if body["status"] == "down":
            self._live.pop(key, None)
        else:
            self._live[key] = body
        return TOPIC_PREFIX + body["service"], body

    def due(self) -> list[tuple[str, dict[str, Any]]]:
        """The heartbeats to publish now (every live announcement once per interval)."""
        now = self._clock()
        if now < self._next:
            return []
        self._next = now + self.interval
        return self.current()

    def wait(self) -> float:
        """Seconds until the next heartbeat is due."""
        return max(0.0, min(self._next - self._clock(), self.interval))

    def current(self) -> list[tuple[str, dict[str, Any]]]:
        """Every live announcement, for a directory that just joined."""
        return [(TOPIC_PREFIX + b["service"], b) for b in self._live.values()]

    def withdraw(self) -> list[tuple[str, dict[str, Any]]]:
        """A clean goodbye: ``down`` for everything still announced."""
        goodbyes = [(TOPIC_PREFIX + b["service"], {**b, "status": "down"}) for b in self._live.values()]
        self._live.clear()
        return goodbyes


class DirectoryTable:
    """The live table: entries expire after ``misses`` missed heartbeats; ``down`` removes at once.

    ``apply`` and ``expire`` return events ``(kind, entry)``, kind one of added, changed, removed, expired.
    ``horizon`` (the clock by default) is the time up to which silence counts as missed heartbeats: a fabric
    member passes the last time it heard a fabric server, so losing the fabric expires nothing.
    """

    def __init__(
        self,
        misses: float = 3,
        clock: Clock = time.monotonic,
        max_entries: int = 100_000,
        horizon: Clock | None = None,
    ) -> None:
        if not isinstance(misses, (int, float)) or isinstance(misses, bool) or misses <= 0:
            raise ConfigurationError(f"bad misses {misses!r}: expected a number of heartbeats > 0")
        self.misses = misses
        self.max_entries = check_int("max_entries", max_entries, 1)
        self._clock = clock
        self._horizon = horizon or clock
        self._entries: dict[tuple[str, str], Entry] = {}
        self.malformed = 0
        self.refused = 0  # new entries turned away because the table was full
        self._last_warning = -math.inf

    def apply(self, body: Any) -> list[tuple[str, Entry]]:
        """Take one announcement body; a bad one is counted, logged (at most every 10 s) and ignored."""
        try:
            entry = self.parse(body)
        except (ProtocolError, ConfigurationError) as exc:
            self.reject(exc)
            return []
        return self.apply_entry(entry)

    def reject(self, error: Exception) -> None:
        """Count a malformed announcement; log it, at most one line per :data:`MALFORMED_LOG_INTERVAL`."""
        self.malformed += 1
        now = self._clock()
        if now - self._last_warning >= MALFORMED_LOG_INTERVAL:
            self._last_warning = now
            log.warning("ignored a malformed presence announcement (%d so far): %s", self.malformed, error)

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    def holds(self, entry: Entry) -> bool:
        """Whether the table has an entry for ``entry``'s service and endpoint."""
        return (entry.service, entry.endpoint) in self._entries

    def apply_entry(self, entry: Entry) -> list[tuple[str, Entry]]:
        """Take one checked announcement; returns the events it causes (none for a plain heartbeat)."""
        key = (entry.service, entry.endpoint)
        old = self._entries.get(key)
        if entry.status == "down":
            if old is None:
                return []
            del self._entries[key]
            return [("removed", entry)]
        if old is None and len(self._entries) >= self.max_entries:
            self.refused += 1  # a flood of made-up endpoints costs bounded memory; heartbeats of known ones go on
            return []
        self._entries[key] = entry
        if old is None:
            return [("added", entry)]
        if (old.status, old.meta, old.node) != (entry.status, entry.meta, entry.node):
            return [("changed", entry)]
        return []

    def parse(self, body: Any) -> Entry:
        """Check one announcement body (ProtocolError naming what is wrong) and date it now."""
        if not isinstance(body, dict):
            raise ProtocolError(f"announcement is not a JSON object: {body!r:.80}")
        fields = check_announcement(body.get("service"), body.get("endpoint"), body.get("status"), body.get("meta"))
        parse_endpoint(fields["endpoint"])  # one a client could connect to: a bad one would break every follower
        interval = check_interval(body.get("interval"), ProtocolError)
        now = self._clock()
        return Entry(
            **fields,
            node=str(body.get("node", "")),
            interval=interval,
            last_seen=now,
            expires_at=now + interval * self.misses,
        )

    def renew(self) -> None:
        """Give every entry at least a full expiry window from now: after a silence of the fabric, each
        announcer has that long to be heard again before its entry expires."""
        now = self._clock()
        for key, e in self._entries.items():
            self._entries[key] = replace(e, expires_at=max(e.expires_at, now + e.interval * self.misses))

    def expire(self) -> list[tuple[str, Entry]]:
        """Drop the entries whose heartbeats stopped."""
        now = self._horizon()
        gone = [key for key, e in self._entries.items() if e.expires_at <= now]
        return [("expired", self._entries.pop(key)) for key in gone]

    def lookup(self, service: str | None = None, status: str | None = None) -> list[Entry]:
        """Live entries for ``service`` (all services when None), optionally of one status; up ones first."""
        now = self._horizon()
        found = [
            e
            for e in self._entries.values()
            if e.expires_at > now
            and (service is None or e.service == service)
            and (status is None or e.status == status)
        ]
        return sorted(found, key=lambda e: (e.service, e.status != "up", e.endpoint))


def body_of(entry: Entry) -> dict[str, Any]:
    """An entry as the announcement body that made it (what a fabric server passes on)."""
    return {
        "service": entry.service,
        "endpoint": entry.endpoint,
        "status": entry.status,
        "meta": entry.meta,
        "interval": entry.interval,
        "node": entry.node,
    }
