"""Cache wire protocol ZKC v3, sans-I/O: one frame per request and per reply, commands, status codes.

A request is ``ZKC\\x03 + rid(u32) + opcode(u8) + arguments``; a reply is ``ZKC\\x03 + rid(u32) + status(u8) +
body``, each in ONE frame: a one-frame message is what a raw REQ/REP round trip sends, and every extra frame
measurably slows a round trip. Every argument but the last is a u32 length and its bytes; the last runs to the
end of the frame. The request id is echoed so a pipelining client matches replies to requests. docs/wire.md
has every command.

>>> frame = encode_request(u32(7), b"get", [b"user:1"])
>>> decode_request(frame)
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
    "OPCODES",
    "GET_OPCODE",
    "OK_BYTE",
    "NOT_FOUND_BYTE",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
    "request_id",
    "pack_args",
    "unpack_args",
    "pack_list",
    "unpack_list",
    "u32",
    "u64",
    "read_u32",
    "read_u64",
]

PROTOCOL = ProtocolId(b"ZKC", 3)
HEADER = PROTOCOL.header
_U32 = struct.Struct(">I")
_H = len(HEADER)  # the request id follows the header
HEAD = _H + 4  # header + request id: the opcode (request) or the status byte (reply) comes next


class Status(IntEnum):
    """The one-byte status that follows the request id in every reply."""

    OK = 0
    NOT_FOUND = 1
    NOT_STORED = 2
    EXISTS = 3
    LEASED = 4  # lease_get: a miss, and the caller now holds the lease to fill it
    WAIT = 5  # lease_get: a miss, another caller holds the lease
    BAD_REQUEST = 10  # malformed or unknown request; body: UTF-8 message
    TOO_LARGE = 11  # value above the node's max item size; body: message
    NOT_A_NUMBER = 12  # incr/decr on a non-numeric value; body: message
    SERVER_ERROR = 13  # the node failed; body: message


# command -> (opcode, number of arguments); the argument layout is in docs/wire.md
COMMANDS: dict[bytes, tuple[int, int]] = {
    b"get": (1, 1),
    b"gets": (2, 1),
    b"get_many": (3, 1),
    b"set": (4, 3),
    b"add": (5, 3),
    b"replace": (6, 3),
    b"append": (7, 2),
    b"prepend": (8, 2),
    b"cas": (9, 4),
    b"delete": (10, 1),
    b"delete_many": (11, 1),
    b"set_many": (12, 2),
    b"incr": (13, 2),
    b"decr": (14, 2),
    b"touch": (15, 2),
    b"flush_all": (16, 0),
    b"stats": (17, 0),
    b"version": (18, 0),
    b"ping": (19, 0),
    b"lease_get": (20, 2),
    b"lease_set": (21, 4),
}
OPCODES: dict[int, tuple[bytes, int]] = {code: (name, arity) for name, (code, arity) in COMMANDS.items()}
_OPCODE_BYTE = {name: bytes([code]) for name, (code, _) in COMMANDS.items()}
_STATUS_BYTE = {s: bytes([s]) for s in Status}
# The bytes of a get and of its two answers, for the hot paths that read and build those frames inline.
GET_OPCODE = _OPCODE_BYTE[b"get"]
OK_BYTE, NOT_FOUND_BYTE = _STATUS_BYTE[Status.OK], _STATUS_BYTE[Status.NOT_FOUND]

# Fixed-width numbers are the core's (zmqkit.wire); short names here because every command uses them.
u32, u64, read_u32, read_u64 = pack_u32, pack_u64, unpack_u32, unpack_u64


def pack_list(items: list[bytes]) -> bytes:
    """Many byte strings as one: each as a u32 length, then its bytes."""
    parts = []
    pack = _U32.pack
    for item in items:
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def unpack_list(data: bytes, what: str = "list") -> list[bytes]:
    """The byte strings of a :func:`pack_list`; ProtocolError if it is cut short."""
    out = []
    at, end = 0, len(data)
    unpack_from = _U32.unpack_from
    while at < end:
        if at + 4 > end:
            raise ProtocolError(f"{what} ends inside a length prefix at byte {at}")
        (size,) = unpack_from(data, at)
        at += 4
        if at + size > end:
            raise ProtocolError(f"{what} holds {end - at} bytes where an item of {size} was announced")
        out.append(data[at : at + size])
        at += size
    return out


def pack_args(args: list[bytes]) -> bytes:
    """Arguments as they follow the opcode: each but the last length-prefixed, the last as is."""
    return pack_list(args[:-1]) + args[-1] if args else b""


def unpack_args(data: bytes, count: int, at: int = 0) -> list[bytes]:
    """``count`` arguments from ``data[at:]`` (see :func:`pack_args`); ProtocolError if they do not fit."""
    if count == 1:
        return [data[at:]]
    out = []
    end = len(data)
    for i in range(count - 1):
        if at + 4 > end:
            raise ProtocolError(f"request ends inside the length of argument {i + 1} of {count}")
        (size,) = _U32.unpack_from(data, at)
        at += 4
        if at + size > end:
            raise ProtocolError(f"argument {i + 1} of {count} announces {size} bytes; {end - at} are left")
        out.append(data[at : at + size])
        at += size
    if count:
        out.append(data[at:])
    elif at != end:
        raise ProtocolError(f"this command takes no arguments, got {end - at} bytes after the opcode")
    return out


def encode_request(rid: bytes, command: bytes, args: list[bytes]) -> bytes:
    """The request frame (``rid``: 4 bytes)."""
    # One argument (a key: the hottest requests) needs no length and no helper call.
    return HEADER + rid + _OPCODE_BYTE[command] + (args[0] if len(args) == 1 else pack_args(args))


def decode_request(frame: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """``(rid bytes, command name, args)``; ProtocolError names what is wrong."""
    if frame[:_H] != HEADER:
        PROTOCOL.check(bytes(frame[:_H]))  # raises, naming the version or the bad header
    if len(frame) <= HEAD:
        raise ProtocolError("a request is the header, a 4-byte request id, an opcode, then the arguments")
    known = OPCODES.get(frame[HEAD])
    if known is None:
        raise ProtocolError(f"unknown opcode {frame[HEAD]}")
    return frame[_H:HEAD], known[0], unpack_args(frame, known[1], HEAD + 1)


def request_id(frame: bytes) -> bytes:
    """The request id to echo, even from a request that is otherwise bad (zeros if there is none)."""
    return frame[_H:HEAD] if len(frame) >= HEAD else b"\x00\x00\x00\x00"


def encode_reply(rid: bytes, status: Status, body: bytes = b"") -> bytes:
    """The reply frame."""
    return HEADER + rid + _STATUS_BYTE[status] + body


def decode_reply(frame: bytes) -> tuple[bytes, int, bytes]:
    """``(rid bytes, status, body)`` of a reply frame."""
    if len(frame) <= HEAD:
        raise ProtocolError(f"reply is not header + rid + status + body: {bytes(frame[:16])!r}")
    if frame[:_H] != HEADER:
        PROTOCOL.check(bytes(frame[:_H]))
    return frame[_H:HEAD], frame[HEAD], frame[HEAD + 1 :]
