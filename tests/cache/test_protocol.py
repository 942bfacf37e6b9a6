"""ZKC frames and the node's request handler, without sockets."""

import pytest

from zmqkit import ProtocolError
from zmqkit.cache.protocol import (
    HEADER,
    Status,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    pack_list,
    u32,
    u64,
    unpack_list,
)
from zmqkit.cache.service import Service
from zmqkit.cache.store import Store

RID = b"\x00\x00\x00\x2a"


def call(service: Service, command: bytes, *args: bytes) -> tuple[int, list[bytes]]:
    rid, status, results = decode_reply(service.handle([HEADER + RID + command, *args]))
    assert rid == RID
    return status, results


def test_request_round_trip() -> None:
    frames = encode_request(42, b"get", [b"k"])
    assert frames == [b"ZKC\x02" + RID + b"get", b"k"]
    assert decode_request(frames) == (RID, b"get", [b"k"])


def test_reply_round_trip() -> None:
    frames = encode_reply(RID, Status.NOT_FOUND)
    assert frames == [b"ZKC\x02" + RID + b"\x01"]
    assert decode_reply(frames) == (RID, Status.NOT_FOUND, [])


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "empty request"),
        ([b"ZKC\x01", RID + b"get", b"k"], "unsupported ZKC version 1"),
        ([b"XYZ\x02" + RID + b"get", b"k"], "expected protocol header"),
        ([HEADER + b"\x00\x00", b"k"], "request id"),
        ([HEADER + RID + b"frobnicate"], "unknown command"),
        ([HEADER + RID + b"get"], "takes 1 argument"),
        ([HEADER + RID + b"set", b"k", b"v"], "takes 3"),
    ],
)
def test_bad_requests(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_request(frames)


def test_handler_answers_bad_input_with_errors() -> None:
    service = Service(Store())
    assert call(service, b"get", b"")[0] == Status.BAD_REQUEST
    assert call(service, b"get", b"k" * 251)[0] == Status.BAD_REQUEST
    assert call(service, b"set", b"k", b"", u32(0))[0] == Status.BAD_REQUEST  # no codec byte
    assert call(service, b"set", b"k", b"\x00v", b"\x00")[0] == Status.BAD_REQUEST  # ttl not u32
    status, (message,) = call(service, b"nope")
    assert status == Status.BAD_REQUEST and b"unknown command" in message
    _, status, _ = decode_reply(service.handle([b"junk"]))
    assert status == Status.BAD_REQUEST


def test_handler_commands() -> None:
    service = Service(Store(max_item="1K"))
    assert call(service, b"set", b"k", b"\x02" + b"41", u32(0)) == (Status.OK, [])
    assert call(service, b"incr", b"k", u64(1)) == (Status.OK, [u64(42)])
    assert call(service, b"get", b"k") == (Status.OK, [b"\x0242"])
    _, (_, cas) = call(service, b"gets", b"k")
    assert call(service, b"cas", b"k", b"\x00x", u32(0), u64(int.from_bytes(cas, "big") + 1))[0] == Status.EXISTS
    assert call(service, b"get_many", pack_list([b"k", b"missing"])) == (Status.OK, [pack_list([b"\x0242", b""])])
    assert call(service, b"set_many", u32(0), pack_list([b"a", b"\x00A", b"b", b"\x00B"])) == (Status.OK, [])
    assert call(service, b"delete_many", pack_list([b"a", b"zz", b"b"])) == (Status.OK, [b"\x00\x01\x00"])
    assert call(service, b"set", b"big", b"\x00" + b"x" * 1024, u32(0))[0] == Status.TOO_LARGE
    big = pack_list([b"a", b"\x00A", b"big", b"\x00" + b"x" * 1024])
    assert call(service, b"set_many", u32(0), big)[0] == Status.TOO_LARGE
    assert call(service, b"set_many", u32(0), pack_list([b"a"]))[0] == Status.BAD_REQUEST  # a key, no value
    assert call(service, b"get_many", b"\x00\x00\x00\x09abc")[0] == Status.BAD_REQUEST  # cut short
    assert call(service, b"get", b"a")[0] == Status.NOT_FOUND  # set_many is all or nothing
    assert call(service, b"set", b"s", b"\x01abc", u32(0))[0] == Status.OK
    assert call(service, b"incr", b"s", u64(1))[0] == Status.NOT_A_NUMBER
    assert call(service, b"lease_get", b"m", u32(1000))[0] == Status.LEASED
    assert call(service, b"lease_get", b"m", u32(1000))[0] == Status.WAIT
    stats = dict(zip(*[iter(call(service, b"stats")[1])] * 2, strict=True))
    assert stats[b"cmd_incr"] == b"2" and stats[b"limit_maxbytes"] == b"67108864"
    assert call(service, b"ping")[1] == [service.node_id]


def test_packed_lists() -> None:
    items = [b"", b"a", b"\x00" * 300]
    assert pack_list(items) == b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01a" + b"\x00\x00\x01\x2c" + b"\x00" * 300
    assert unpack_list(pack_list(items)) == items
    assert unpack_list(b"") == []
    with pytest.raises(ProtocolError, match="inside a length prefix"):
        unpack_list(b"\x00\x00")
