"""The cache store: a byte-bounded LRU with per-item TTL (cachetools.TLRUCache) and memcached's semantics.

Pure and socket-free: a node runs one, tests drive it directly with a fake clock.

>>> store = Store(memory=64 * 2**20, clock=fake_clock)
>>> store.set(b"k", b"\\x01hello", ttl=60)
>>> store.get(b"k")
b'\\x01hello'

Values are stored as their wire form: one codec byte (the "flags") followed by the payload, so a get answers
with the stored bytes unchanged.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

from zmqkit.errors import ConfigurationError, DataError

__all__ = [
    "Store",
    "TooLarge",
    "NotANumber",
    "MAX_KEY",
    "ITEM_OVERHEAD",
    "RELATIVE_TTL_LIMIT",
    "LEASE_OVERHEAD",
    "LEASE_SHARE",
    "parse_size",
    "check_ttl",
]

MAX_KEY = 250  # bytes, as memcached
RELATIVE_TTL_LIMIT = 30 * 24 * 3600  # memcached: a TTL above 30 days is an absolute unix time
# Bytes a stored item costs beyond its key and value: the entry object, the key and value bytes objects'
# headers, the slots in cachetools' dicts, OrderedDict node and expiry heap item. Measured with tracemalloc
# and RSS after filling a node many times over (malloc keeps some freed memory), so that RSS tracks --memory.
ITEM_OVERHEAD = 560
# Bytes a lease costs beyond its key: its slot and link in the OrderedDict, the (token, deadline) tuple and its
# int and float, the key's bytes header. Measured with tracemalloc over 100k leases (tests/cache/test_store.py).
LEASE_OVERHEAD = 256
LEASE_SHARE = 4  # leases may take up to 1/LEASE_SHARE of --memory (evicting items); past that, the oldest lease goes
_U64_MAX = 2**64 - 1
_NEVER = float("inf")


class TooLarge(DataError):
    """An item bigger than the store's max item size (data refused at run time, not a configuration mistake)."""


class NotANumber(DataError):
    """incr/decr on a value that is not a 64-bit unsigned decimal number."""


def check_ttl(ttl: Any) -> int:
    """A TTL as the whole seconds sent on the wire (rounded up: a 0.5 s TTL must not mean "never"); every bad one
    (negative, NaN, infinite, not a number, a bool, a relative TTL above 30 days that is no unix time, above u32)
    is a ConfigurationError naming it. The one check: both clients and the store use it."""
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
        raise ConfigurationError(f"bad ttl {ttl!r}: expected seconds >= 0 (0 = never expires), a number")
    if not (0 <= ttl < 2**32) or (isinstance(ttl, float) and not math.isfinite(ttl)):
        raise ConfigurationError(f"bad ttl {ttl!r}: expected seconds from 0 (never expires) to 2**32-1 (unix time)")
    whole = math.ceil(ttl)
    if RELATIVE_TTL_LIMIT < whole < 10**9 or whole > 0xFFFFFFFF:
        raise ConfigurationError(f"bad ttl {ttl!r}: above 30 days a TTL is an absolute unix time (u32)")
    return whole


def parse_size(text: str | int) -> int:
    """``64M`` / ``1K`` / ``2G`` / ``1048576`` -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str):
        raw = text.strip().upper().removesuffix("B")
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(raw[-1:], 1)
        digits = raw[:-1] if scale != 1 else raw
        if not digits.isdigit():
            raise ConfigurationError(f"bad size {text!r}: expected bytes or a number with K, M or G (64M)")
        value = int(digits) * scale
    else:
        raise ConfigurationError(f"bad size {text!r}: expected bytes or a number with K, M or G (64M)")
    if value <= 0:
        raise ConfigurationError(f"bad size {text!r}: must be positive")
    return value


class _Entry:
    """One stored item; immutable once made (a change stores a new entry)."""

    __slots__ = ("cas", "expires", "size", "value")

    def __init__(self, value: bytes, cas: int, expires: float, size: int) -> None:
        self.value = value
        self.cas = cas
        self.expires = expires
        self.size = size


class _LRU(TLRUCache):
    """TLRUCache that counts what it evicts and what expires."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        super().__init__(maxsize, ttu=_ttu, timer=clock, getsizeof=_sizeof)
        self.evictions = 0
        self.expired = 0

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        gone = super().expire(time)
        self.expired += len(gone)
        return gone

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls popitem only to make room: every call is an eviction.
        item = super().popitem()
        self.evictions += 1
        return item


def _ttu(_key: bytes, entry: _Entry, _now: float) -> float:
    return entry.expires


def _sizeof(entry: _Entry) -> int:
    return entry.size


class Store:
    """A byte-bounded LRU cache with per-item TTL and memcached's commands; time from ``clock``.

    ``memory`` bounds keys + values + :data:`ITEM_OVERHEAD` per item; ``max_item`` bounds one value.
    ``wall`` (unix time) only converts absolute TTLs (above 30 days) to the monotonic ``clock``.
    """

    def __init__(
        self,
        memory: int | str = 64 * 2**20,
        max_item: int | str = 2**20,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.memory = parse_size(memory)
        self.max_item = parse_size(max_item)
        if self.max_item + MAX_KEY + ITEM_OVERHEAD > self.memory:
            raise ConfigurationError(f"max item size {max_item!r} does not fit in memory {memory!r}")
        self._clock = self.clock = clock
        self._wall = wall
        self._lru = _LRU(self.memory, clock)
        self._cas = 0
        # key -> (token, deadline), oldest grant first: expiry and the bound pop from the front, in O(1).
        self._leases: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.lease_bytes = 0  # what the leases cost, counted in ``memory`` with the items
        self.lease_limit = self.memory // LEASE_SHARE
        self.started = clock()
        self.hits = 0
        self.misses = 0
        self.other_lookups = 0  # hits + misses counted by commands other than get (so cmd_get needs no counter)
        self.commands: Counter[bytes] = Counter()  # per command name but get, for stats

    # -- helpers -------------------------------------------------------------------------------------------

    def _expires(self, ttl: int) -> float:
        """memcached TTL -> monotonic deadline: 0 never, up to 30 days relative, above that unix time."""
        if type(ttl) is not int or not 0 <= ttl <= RELATIVE_TTL_LIMIT:  # (the node's u32 TTLs skip the call)
            ttl = check_ttl(ttl)
        if ttl == 0:
            return _NEVER
        now = self._clock()
        if ttl <= RELATIVE_TTL_LIMIT:
            return now + ttl
        return now + (ttl - self._wall())

    def _entry(self, key: bytes) -> _Entry | None:
        try:
            return self._lru[key]
        except KeyError:
            return None

    def _put(self, key: bytes, value: bytes, expires: float) -> int:
        size = len(key) + len(value) + ITEM_OVERHEAD
        if len(value) > self.max_item:
            raise TooLarge(f"item {key[:60]!r} is {len(value)} bytes; the max item size is {self.max_item}")
        self._cas += 1
        if self._leases:
            self._drop_lease(key)
        self._lru[key] = _Entry(value, self._cas, expires, size)
        if self.lease_bytes:
            self._make_room()
        return self._cas

    # -- memcached commands --------------------------------------------------------------------------------

    def hit(self, key: bytes) -> bytes | None:
        """The value of a live ``key``, now the most recently used and counted as a get hit; None otherwise,
        counted nowhere (a node answers a hit with it, anything else through :meth:`get`)."""
        try:
            value = self._lru[key].value  # (expired: cachetools' __missing__ raises KeyError)
        except KeyError:
            return None
        self.hits += 1
        return value

    def get(self, key: bytes) -> bytes | None:
        value = self.hit(key)
        if value is None:
            self.misses += 1
        return value

    def get_many(self, keys: list[bytes]) -> list[bytes]:
        """Each key's value, or ``b""`` for a miss (a stored value is never empty: it has its codec byte)."""
        hit = self.hit
        out = [hit(key) or b"" for key in keys]
        misses = out.count(b"")
        self.misses += misses
        self.other_lookups += len(out)
        return out

    def gets(self, key: bytes) -> tuple[bytes, int] | None:
        self.other_lookups += 1
        entry = self._entry(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry.value, entry.cas

    def set(self, key: bytes, value: bytes, ttl: int = 0) -> int:
        """Store ``value``; return its cas token."""
        expires = self._expires(ttl)
        if expires <= self._clock():
            self.delete(key)
            return 0
        return self._put(key, value, expires)

    def add(self, key: bytes, value: bytes, ttl: int = 0) -> bool:
        if key in self._lru:
            return False
        self.set(key, value, ttl)
        return True

    def replace(self, key: bytes, value: bytes, ttl: int = 0) -> bool:
        if key not in self._lru:
            return False
        self.set(key, value, ttl)
        return True

    def append(self, key: bytes, data: bytes) -> bool:
        entry = self._entry(key)
        if entry is None:
            return False
        self._put(key, entry.value + data, entry.expires)
        return True

    def prepend(self, key: bytes, data: bytes) -> bool:
        entry = self._entry(key)
        if entry is None:
            return False
        # The first byte is the codec id: new data goes after it, before the payload.
        self._put(key, entry.value[:1] + data + entry.value[1:], entry.expires)
        return True

    def cas(self, key: bytes, value: bytes, ttl: int, token: int) -> bool | None:
        """Store only if the item's cas token is still ``token``: True stored, False changed, None missing."""
        entry = self._entry(key)
        if entry is None:
            return None
        if entry.cas != token:
            return False
        self.set(key, value, ttl)
        return True

    def delete(self, key: bytes) -> bool:
        if self._leases:
            self._drop_lease(key)
        present = key in self._lru
        # KeyError: already gone, or expired (cachetools raises after removing an expired item).
        with contextlib.suppress(KeyError):
            del self._lru[key]
        return present

    def incr(self, key: bytes, delta: int) -> int | None:
        """Add ``delta`` (wrapping at 2**64 as memcached does); None when the key is missing."""
        return self._add_number(key, delta, wrap=True)

    def decr(self, key: bytes, delta: int) -> int | None:
        """Subtract ``delta``, stopping at 0; None when the key is missing."""
        return self._add_number(key, -delta, wrap=False)

    def _add_number(self, key: bytes, delta: int, *, wrap: bool) -> int | None:
        entry = self._entry(key)
        if entry is None:
            return None
        digits = entry.value[1:]
        if not digits.isdigit() or len(digits) > 20 or int(digits) > _U64_MAX:
            raise NotANumber(f"cannot incr/decr {key[:60]!r}: its value is not a 64-bit unsigned decimal number")
        number = int(digits) + delta
        number = number & _U64_MAX if wrap else max(number, 0)
        self._put(key, entry.value[:1] + b"%d" % number, entry.expires)
        return number

    def touch(self, key: bytes, ttl: int) -> bool:
        entry = self._entry(key)
        if entry is None:
            return False
        self.set(key, entry.value, ttl)
        return True

    def flush_all(self) -> None:
        self._lru.clear()
        self._leases.clear()
        self.lease_bytes = 0

    # -- leases (stampede protection) ----------------------------------------------------------------------
    #
    # A lease costs LEASE_OVERHEAD + its key, counted in ``memory`` beside the items: granting one evicts items
    # (least recently used first) when the two together would pass ``memory``. Leases may take at most
    # ``memory // LEASE_SHARE`` bytes; past that a new lease pushes out the oldest one (its holder's lease_set
    # then stores nothing), so a flood of lease requests costs O(1) each and never empties the cache.

    def lease_get(self, key: bytes, lease_seconds: float) -> tuple[bytes | None, int, bool]:
        """``(value, 0, False)`` on a hit; on a miss ``(None, token, False)`` grants the caller a lease to fill
        the key, ``(None, 0, True)`` says another caller holds one: wait and ask again."""
        self.other_lookups += 1
        value = self.get(key)
        if value is not None:
            return value, 0, False
        now = self._clock()
        leases = self._leases
        held = leases.get(key)
        if held is not None:
            if now < held[1]:
                return None, 0, True
            self._drop_lease(key)
        # Expired leases at the front go first; a lease behind a longer one waits its turn, counted meanwhile.
        while leases:
            first = next(iter(leases.items()))
            if now < first[1][1]:
                break
            self._drop_lease(first[0])
        cost = LEASE_OVERHEAD + len(key)
        while leases and self.lease_bytes + cost > self.lease_limit:
            self._drop_lease(next(iter(leases)))
        self._cas += 1
        leases[key] = (self._cas, now + lease_seconds)
        self.lease_bytes += cost
        self._make_room()
        return None, self._cas, False

    def lease_set(self, key: bytes, value: bytes, ttl: int, token: int) -> bool:
        """Store if ``token`` is still the key's lease (a set or delete since then cancelled it)."""
        held = self._leases.get(key)
        if held is None or held[0] != token:
            return False
        self.set(key, value, ttl)
        return True

    def _drop_lease(self, key: bytes) -> None:
        if self._leases.pop(key, None) is not None:
            self.lease_bytes -= LEASE_OVERHEAD + len(key)

    def _make_room(self) -> None:
        """Evict items until items and leases together fit in ``memory``."""
        lru = self._lru
        while lru and lru.currsize + self.lease_bytes > self.memory:
            lru.popitem()

    @property
    def leases(self) -> int:
        """Leases in the table (live, or expired and not swept yet)."""
        return len(self._leases)

    # -- stats ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters and levels, expired items dropped first (from the node's own thread)."""
        self._lru.expire()
        return self.counters()

    def counters(self) -> dict[str, int]:
        """:meth:`stats` without dropping expired items first: it changes nothing, so another thread (a metrics
        scrape) may call it while the node serves."""
        commands = Counter(dict(self.commands))  # dict() copies in one step under the GIL; Counter.copy iterates
        gets = self.hits + self.misses - self.other_lookups  # every get is a hit or a miss
        if gets:
            commands[b"get"] += gets
        counts = {f"cmd_{name.decode()}": n for name, n in sorted(commands.items())}
        return {
            "uptime": int(self._clock() - self.started),
            "items": len(self._lru),
            "bytes": int(self._lru.currsize) + self.lease_bytes,
            "leases": len(self._leases),
            "lease_bytes": self.lease_bytes,
            "limit_maxbytes": self.memory,
            "max_item_size": self.max_item,
            "get_hits": self.hits,
            "get_misses": self.misses,
            "evictions": self._lru.evictions,
            "expired": self._lru.expired,
            **counts,
        }

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: bytes) -> bool:
        return key in self._lru
