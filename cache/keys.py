"""Cache keys as sent: the one encoding of str, bytes, int and tuple keys, and of memoized calls' arguments.

>>> key_bytes("5"), key_bytes(5)
(b'5', b'\\xffi5')

str keys travel as UTF-8 and bytes keys as they are, so other clients share them. Every other key starts with the
byte ``0xFF``, which UTF-8 never produces and which a bytes key may not start with, then a type letter: no two keys
that differ only in type meet on a node. docs/wire.md (cache, "Keys") has the layout.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import mmh3

from zmqkit.errors import ConfigurationError

from .store import MAX_KEY

__all__ = ["Key", "TYPED", "key_bytes", "canonical"]

Key: TypeAlias = "str | bytes | int | tuple[Any, ...]"
"""What a cache key may be (:func:`key_bytes` is the encoding)."""

TYPED = 0xFF  # first byte of every key that is not a str or bytes key
_INT = b"\xffi"  # an int key: then its ASCII decimal
_TUPLE = b"\xfft"  # a tuple key (cachetools' hashkey): then canonical(key)
_HASHED = b"\xffh"  # a tuple key whose canonical form is above MAX_KEY: then its murmur3 128-bit hash, in hex


def key_bytes(key: Any) -> bytes:
    """``key`` as sent to a node (1 to MAX_KEY bytes); ConfigurationError for any other type or size."""
    kind = type(key)
    if kind is str:
        raw = key.encode()
    elif kind is bytes or kind is bytearray or kind is memoryview:
        raw = bytes(key)
        if raw[:1] == b"\xff":
            raise ConfigurationError(f"bad key {key!r:.80}: a bytes key may not start with 0xFF (typed keys do)")
    elif kind is int:
        raw = _INT + b"%d" % key
        if len(raw) > MAX_KEY:
            raise ConfigurationError(f"bad key {key!r:.80}: an int key has at most {MAX_KEY - 2} digits")
        return raw
    elif isinstance(key, tuple):
        text = canonical(key)
        return _TUPLE + text if len(text) <= MAX_KEY - 2 else _HASHED + mmh3.hash_bytes(text).hex().encode()
    else:
        raise ConfigurationError(
            f"bad key {key!r:.80}: a key is a str, bytes, int or tuple, not {kind.__name__}"
            + (" (True would be the same key as 1)" if kind is bool else "")
        )
    if not 0 < len(raw) <= MAX_KEY:
        raise ConfigurationError(f"bad key {key!r:.80}: a key is 1 to {MAX_KEY} bytes")
    return raw


def canonical(value: Any) -> bytes:
    """The same bytes in every process for equal ``value`` (no hash order, no repr of sets): a type letter, then
    the data; containers are length-prefixed, sets and dicts sorted by their items' encodings. ConfigurationError
    names any type it cannot encode."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    # bool before int (it is one), exact kinds before subclasses: an IntEnum encodes as the int it equals.
    if value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        out.append(b"i%d;" % value)
    elif isinstance(value, float):
        out.append(b"f" + repr(value).encode() + b";")  # repr round-trips a float exactly, in every process
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data) + data)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"b%d:" % len(data) + data)
    elif isinstance(value, (tuple, list)):
        out.append(b"(%d:" % len(value) if isinstance(value, tuple) else b"[%d:" % len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, (set, frozenset)):
        items = sorted(canonical(item) for item in value)
        out.append(b"{%d:" % len(items) if isinstance(value, set) else b"<%d:" % len(items))
        out += items
    elif isinstance(value, dict):
        pairs = sorted((canonical(k), canonical(v)) for k, v in value.items())
        out.append(b"d%d:" % len(pairs))
        for k, v in pairs:
            out += (k, v)
    else:
        raise ConfigurationError(
            f"cannot make a cache key of {value!r:.80}: {type(value).__name__} has no canonical encoding (use "
            "str, bytes, int, float, bool, None, or tuples, lists, dicts and sets of them)"
        )
