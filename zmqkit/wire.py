"""Wire helpers shared by every capability: the protocol id, fixed-width numbers, envelopes.

Every zmqkit message carries its protocol id in its first frame: a short ASCII tag followed by one version
byte (``b"ZKC\\x02"`` is cache protocol version 2), either as the whole frame or opening it. Numbers are
fixed-width big-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .errors import ProtocolError

__all__ = ["ProtocolId", "pack_u32", "unpack_u32", "pack_u64", "unpack_u64", "split_envelope", "ProtocolError"]

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class ProtocolId:
    """A protocol's header frame: ``tag`` (ASCII) + one version byte."""

    __slots__ = ("header", "tag", "version")

    def __init__(self, tag: bytes, version: int) -> None:
        if not tag.isascii() or not 1 <= len(tag) <= 8 or not 0 < version < 256:
            raise ValueError(f"bad protocol id {tag!r} v{version}")
        self.tag = tag
        self.version = version
        self.header = tag + bytes([version])

    def check(self, frame: bytes) -> None:
        """Raise ProtocolError unless ``frame`` is this protocol's header."""
        if frame != self.header:
            if bytes(frame[:-1]) == self.tag:
                raise ProtocolError(
                    f"unsupported {self.tag.decode()} version {frame[-1]}; this side speaks {self.version}"
                )
            raise ProtocolError(f"expected protocol header {self.header!r}, got {bytes(frame[:16])!r}")

    def __repr__(self) -> str:
        return f"ProtocolId({self.tag!r}, {self.version})"


def pack_u32(value: int) -> bytes:
    return _U32.pack(value)


def unpack_u32(frame: bytes, what: str = "number") -> int:
    if len(frame) != 4:
        raise ProtocolError(f"{what} must be 4 bytes big-endian, got {len(frame)} bytes")
    return int(_U32.unpack(frame)[0])


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(frame: bytes, what: str = "number") -> int:
    if len(frame) != 8:
        raise ProtocolError(f"{what} must be 8 bytes big-endian, got {len(frame)} bytes")
    return int(_U64.unpack(frame)[0])


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a ROUTER message at the first empty delimiter frame: ``(routing ids, body)``."""
    for i, frame in enumerate(frames):
        if not frame:
            return list(frames[:i]), list(frames[i + 1 :])
    raise ProtocolError("message has no empty delimiter frame after its routing envelope")
