"""Cache wire protocol ZKC v2, sans-I/O: request and reply frames, commands, status codes.

A request is ``[ZKC\\x02 + rid(u32) + COMMAND, *args]``; a reply is ``[ZKC\\x02 + rid(u32) + status(u8), *results]``:
the protocol header opens the first frame rather than being a frame of its own (one frame fewer each way is
the cheapest speed-up a round trip can get). The request id is echoed so a pipelining client matches replies
to requests. docs/wire.md has every frame.

>>> frames = encode_request(7, b"get", [b"user:1"])
>>> decode_request(frames)
(b'\\x00\\x00\\x00\\x07', b'get', [b'user:1'])
"""

from __future__ import annotations

import struct
from enum import IntEnum

from zmqkit.errors import ProtocolError
from zmqkit.wire import ProtocolId, pack_u32, pack_u64, unpack_u32, unpack_u64

__all__ = [
    "PROTOCOL",
    "HEADER",
    "HEAD",
    "Status",
    "COMMANDS",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
    "request_id",
    "pack_list",
    "unpack_list",
    "u32",
    "u64",
    "read_u32",
    "read_u64",
]

PROTOCOL = ProtocolId(b"ZKC", 2)
HEADER = PROTOCOL.header
_U32 = struct.Struct(">I")
_H = len(HEADER)  # the request id follows the header in the first frame
HEAD = _H + 4  # header + request id: the command name (request) or the status byte (reply) comes next


class Status(IntEnum):
    """The one-byte status that starts every reply (after the request id)."""

    OK = 0
    NOT_FOUND = 1
    NOT_STORED = 2
    EXISTS = 3
    LEASED = 4  # lease_get: a miss, and the caller now holds the lease to fill it
    WAIT = 5  # lease_get: a miss, another caller holds the lease
    BAD_REQUEST = 10  # malformed or unknown request; one frame: UTF-8 message
    TOO_LARGE = 11  # value above the node's max item size; one frame: message
    NOT_A_NUMBER = 12  # incr/decr on a non-numeric value; one frame: message
    SERVER_ERROR = 13  # the node failed; one frame: message


# command -> (min args, max args, or -1 for "any number"), the argument layout is in docs/wire.md
COMMANDS: dict[bytes, tuple[int, int]] = {
    b"get": (1, 1),
    b"gets": (1, 1),
    b"get_many": (1, 1),
    b"set": (3, 3),
    b"add": (3, 3),
    b"replace": (3, 3),
    b"append": (2, 2),
    b"prepend": (2, 2),
    b"cas": (4, 4),
    b"delete": (1, 1),
    b"delete_many": (1, 1),
    b"set_many": (2, 2),
    b"incr": (2, 2),
    b"decr": (2, 2),
    b"touch": (2, 2),
    b"flush_all": (0, 0),
    b"stats": (0, 0),
    b"version": (0, 0),
    b"ping": (0, 0),
    b"lease_get": (2, 2),
    b"lease_set": (4, 4),
}


# Fixed-width numbers are the core's (zmqkit.wire); short names here because every command uses them.
u32, u64, read_u32, read_u64 = pack_u32, pack_u64, unpack_u32, unpack_u64


def pack_list(items: list[bytes]) -> bytes:
    """Many byte strings in one frame: each as a u32 length, then its bytes (one frame is far cheaper to send
    and receive than one frame per item)."""
    parts = []
    pack = _U32.pack
    for item in items:
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def unpack_list(frame: bytes, what: str = "list") -> list[bytes]:
    """The byte strings of a :func:`pack_list` frame; ProtocolError if it is cut short."""
    out = []
    at, end = 0, len(frame)
    unpack_from = _U32.unpack_from
    while at < end:
        if at + 4 > end:
            raise ProtocolError(f"{what} frame ends inside a length prefix at byte {at}")
        (size,) = unpack_from(frame, at)
        at += 4
        if at + size > end:
            raise ProtocolError(f"{what} frame holds {end - at} bytes where an item of {size} was announced")
        out.append(frame[at : at + size])
        at += size
    return out


def encode_request(rid: int, command: bytes, args: list[bytes]) -> list[bytes]:
    """Frames of a request (without the empty delimiter a DEALER puts first)."""
    return [HEADER + _U32.pack(rid & 0xFFFFFFFF) + command, *args]


def _check_header(head: bytes) -> None:
    if head[:_H] != HEADER:
        PROTOCOL.check(bytes(head[:_H]))  # raises, naming the version or the bad header


def decode_request(frames: list[bytes]) -> tuple[bytes, bytes, list[bytes]]:
    """``(rid bytes, command, args)``; ProtocolError names what is wrong."""
    if not frames:
        raise ProtocolError("empty request; expected the header, request id and command, then arguments")
    head = frames[0]
    if head[:_H] != HEADER:
        _check_header(head)
    if len(head) <= HEAD:
        raise ProtocolError("request's first frame must be the header, a 4-byte request id, then a command name")
    command = head[HEAD:]
    arity = COMMANDS.get(command)
    if arity is None:
        raise ProtocolError(f"unknown command {command[:32]!r}")
    args = frames[1:]
    low, high = arity
    if len(args) < low or (high >= 0 and len(args) > high):
        raise ProtocolError(
            f"{command.decode()} takes {low}{'' if high == low else '+'} argument frame(s), got {len(args)}"
        )
    return head[_H:HEAD], command, args


def request_id(frames: list[bytes]) -> bytes:
    """The request id to echo, even from a request that is otherwise bad (zeros if there is none)."""
    return frames[0][_H:HEAD] if frames and len(frames[0]) >= HEAD else b"\x00\x00\x00\x00"


def encode_reply(rid: bytes, status: Status, results: list[bytes] | tuple[bytes, ...] = ()) -> list[bytes]:
    return [HEADER + rid + _STATUS_BYTES[status], *results]


_STATUS_BYTES = {s: bytes([s]) for s in Status}


def decode_reply(frames: list[bytes]) -> tuple[bytes, int, list[bytes]]:
    """``(rid bytes, status, results)`` of a reply (without a DEALER's empty delimiter)."""
    if not frames or len(frames[0]) != HEAD + 1:
        raise ProtocolError(f"reply is not [header+rid+status, ...]: {[bytes(f[:16]) for f in frames[:3]]!r}")
    head = frames[0]
    _check_header(head)
    return head[_H:HEAD], head[HEAD], frames[1:]
