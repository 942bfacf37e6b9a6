"""Codecs: small objects that turn application values into bytes and name themselves on the wire.

Every codec has a one-byte ``id`` that travels with the payload, so the receiver decodes without guessing.
Pickle exists only when asked for by name, and is decoded only by receivers that opted in.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, ClassVar

from .errors import ConfigurationError, DataError, ProtocolError

__all__ = [
    "Codec",
    "BytesCodec",
    "StrCodec",
    "IntCodec",
    "FloatCodec",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "AutoCodec",
    "get_codec",
    "unpack",
    "CODEC_IDS",
]


def _preview(obj: Any) -> str:
    """``repr(obj)`` cut to 80 characters, for error messages; never raises (``repr`` refuses ints over 4300
    digits)."""
    try:
        return f"{obj!r:.80}"
    except ValueError:
        return f"<{type(obj).__name__} that has no repr>"


def _decimal(value: int) -> bytes:
    """``value`` in ASCII decimal; an int over Python's 4300-digit limit is data refused, with its size."""
    try:
        return b"%d" % value
    except ValueError:
        raise DataError(f"an int of {value.bit_length()} bits is over the 4300 decimal digits zmqkit carries") from None


class Codec:
    """Base codec: ``encode(obj) -> bytes``, ``decode(bytes) -> obj``, and a wire ``id``."""

    name: ClassVar[str] = ""
    id: ClassVar[int] = -1

    def encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def pack(self, obj: Any) -> tuple[int, bytes]:
        """Return ``(codec id, payload)``; AutoCodec overrides this to pick a codec per value."""
        return self.id, self.encode(obj)

    def __repr__(self) -> str:
        return f"<codec {self.name}>"


class BytesCodec(Codec):
    """Bare bytes pass through unchanged (bytearray and memoryview are accepted)."""

    name, id = "bytes", 0

    def encode(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        raise ConfigurationError(f"bytes codec cannot encode {type(obj).__name__} value {_preview(obj)}")

    def decode(self, data: bytes) -> bytes:
        return bytes(data)


class StrCodec(Codec):
    """UTF-8 text."""

    name, id = "str", 1

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, str):
            raise ConfigurationError(f"str codec cannot encode {type(obj).__name__} value {_preview(obj)}")
        return obj.encode()

    def decode(self, data: bytes) -> str:
        try:
            return bytes(data).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"payload marked str is not UTF-8: {exc}") from None


class IntCodec(Codec):
    """Integers as ASCII decimal, so counters stay readable (and incr-able) on the wire."""

    name, id = "int", 2

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, int) or isinstance(obj, bool):
            raise ConfigurationError(f"int codec cannot encode {type(obj).__name__} value {_preview(obj)}")
        return _decimal(obj)

    def decode(self, data: bytes) -> int:
        try:
            return int(bytes(data))
        except ValueError:
            raise ProtocolError(f"payload marked int is not ASCII decimal: {bytes(data)[:40]!r}") from None


class FloatCodec(Codec):
    """Floats as their shortest ASCII repr, which round-trips exactly."""

    name, id = "float", 3

    def encode(self, obj: Any) -> bytes:
        if not isinstance(obj, float):
            raise ConfigurationError(f"float codec cannot encode {type(obj).__name__} value {_preview(obj)}")
        return repr(obj).encode()

    def decode(self, data: bytes) -> float:
        try:
            return float(bytes(data))
        except ValueError:
            raise ProtocolError(f"payload marked float is not a number: {bytes(data)[:40]!r}") from None


class JsonCodec(Codec):
    """JSON, UTF-8, compact."""

    name, id = "json", 4

    def encode(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        except TypeError as exc:
            raise ConfigurationError(f"json codec cannot encode {_preview(obj)}: {exc}") from None
        except ValueError as exc:  # a value of a kind it carries, refused as it is (an int too long, a cycle)
            raise DataError(f"json codec cannot encode {_preview(obj)}: {exc}") from None

    def decode(self, data: bytes) -> Any:
        try:
            return json.loads(bytes(data))
        except (ValueError, RecursionError) as exc:  # nesting deeper than the parser's stack is a bad payload too
            raise ProtocolError(f"payload marked json does not parse: {type(exc).__name__}: {exc}") from None


class MsgpackCodec(Codec):
    """msgpack (``pip install zmqkit[msgpack]``)."""

    name, id = "msgpack", 5

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                "codec 'msgpack' needs the msgpack package: pip install 'zmqkit[msgpack]'"
            ) from None
        self._msgpack = msgpack

    def encode(self, obj: Any) -> bytes:
        try:
            return bytes(self._msgpack.packb(obj, use_bin_type=True))
        except TypeError as exc:
            raise ConfigurationError(f"msgpack codec cannot encode {_preview(obj)}: {exc}") from None
        except (ValueError, OverflowError) as exc:  # an int past 64 bits, a value too long
            raise DataError(f"msgpack codec cannot encode {_preview(obj)}: {exc}") from None

    def decode(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise ProtocolError(f"payload marked msgpack does not parse: {exc}") from None


class PickleCodec(Codec):
    """pickle: any Python object, for trusted peers only (unpickling runs code)."""

    name, id = "pickle", 6

    def encode(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:  # unpickling can raise anything
            raise ProtocolError(f"payload marked pickle does not load: {exc}") from None


class AutoCodec(Codec):
    """Pick a codec per value so it comes back with its type: bytes, str, int, float, else JSON.

    With ``fallback=PickleCodec()`` (name ``"auto+pickle"``) values JSON cannot carry are pickled.
    """

    name = "auto"

    def __init__(self, fallback: Codec | None = None) -> None:
        self.fallback = fallback or _JSON

    def __repr__(self) -> str:
        return f"<codec auto+{self.fallback.name}>"

    def pack(self, obj: Any) -> tuple[int, bytes]:
        kind = type(obj)
        if kind is bytes:
            return 0, obj
        if kind is str:
            return 1, obj.encode()
        if kind is int:
            return 2, _decimal(obj)
        if kind is float:
            return 3, repr(obj).encode()
        if isinstance(obj, (bytearray, memoryview)):
            return 0, bytes(obj)
        return self.fallback.pack(obj)

    def encode(self, obj: Any) -> bytes:
        return self.pack(obj)[1]

    def decode(self, data: bytes) -> Any:
        raise ConfigurationError("AutoCodec decodes by wire id: use zmqkit.codecs.unpack(codec_id, data)")


_JSON = JsonCodec()
_FIXED: dict[int, Codec] = {c.id: c for c in (BytesCodec(), StrCodec(), IntCodec(), FloatCodec(), _JSON)}
CODEC_IDS = {"bytes": 0, "str": 1, "int": 2, "float": 3, "json": 4, "msgpack": 5, "pickle": 6}
_msgpack: MsgpackCodec | None = None


def get_codec(spec: str | Codec) -> Codec:
    """Return the codec named ``spec`` (bytes, str, int, float, json, msgpack, pickle, auto, auto+pickle)."""
    if isinstance(spec, Codec):
        return spec
    if not isinstance(spec, str):
        raise ConfigurationError(f"bad codec {spec!r}: give a codec name or a Codec object")
    if spec in CODEC_IDS and CODEC_IDS[spec] in _FIXED:
        return _FIXED[CODEC_IDS[spec]]
    if spec == "msgpack":
        return MsgpackCodec()
    if spec == "pickle":
        return PickleCodec()
    if spec == "auto":
        return AutoCodec()
    if spec == "auto+pickle":
        return AutoCodec(PickleCodec())
    names = ", ".join([*CODEC_IDS, "auto", "auto+pickle"])
    raise ConfigurationError(f"unknown codec {spec!r}: expected one of {names}")


def unpack(codec_id: int, data: bytes, *, allow_pickle: bool = False) -> Any:
    """Decode ``data`` by the codec ``codec_id`` named on the wire.

    A pickled payload raises ProtocolError unless ``allow_pickle`` (the receiver opted in).
    """
    global _msgpack
    codec = _FIXED.get(codec_id)
    if codec is not None:
        return codec.decode(data)
    if codec_id == MsgpackCodec.id:
        if _msgpack is None:
            _msgpack = MsgpackCodec()
        return _msgpack.decode(data)
    if codec_id == PickleCodec.id:
        if not allow_pickle:
            raise ProtocolError("peer sent a pickled payload; refused (opt in with codec='pickle' for trusted peers)")
        return PickleCodec().decode(data)
    raise ProtocolError(f"unknown codec id {codec_id!r}")
