"""ZKC frames and the node's request handler, without sockets."""

import pytest

from zmqkit import ProtocolError
from zmqkit.cache.protocol import (
    COMMANDS,
    HEADER,
    Status,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    pack_args,
    pack_list,
    u32,
    u64,
    unpack_args,
    unpack_list,
)
from zmqkit.cache.service import Service
from zmqkit.cache.store import Store

RID = b"\x00\x00\x00\x2a"


def call(service: Service, command: bytes, *args: bytes) -> tuple[int, bytes]:
    rid, status, body = decode_reply(service.handle(encode_request(RID, command, list(args))))
    assert rid == RID
    return status, body


def test_request_round_trip() -> None:
    frame = encode_request(RID, b"get", [b"k"])
    assert frame == b"ZKC\x03" + RID + b"\x01k"
    assert decode_request(frame) == (RID, b"get", [b"k"])
    frame = encode_request(RID, b"set", [b"k", b"\x01v", u32(5)])
    assert frame == b"ZKC\x03" + RID + b"\x04" + u32(1) + b"k" + u32(2) + b"\x01v" + u32(5)
    assert decode_request(frame) == (RID, b"set", [b"k", b"\x01v", u32(5)])
    assert decode_request(encode_request(RID, b"ping", [])) == (RID, b"ping", [])


def test_reply_round_trip() -> None:
    frame = encode_reply(RID, Status.NOT_FOUND)
    assert frame == b"ZKC\x03" + RID + b"\x01"
    assert decode_reply(frame) == (RID, Status.NOT_FOUND, b"")
    assert decode_reply(encode_reply(RID, Status.OK, b"\x00v")) == (RID, Status.OK, b"\x00v")


def test_opcodes_are_distinct() -> None:
    codes = [code for code, _ in COMMANDS.values()]
    assert len(set(codes)) == len(codes) and 0 not in codes


@pytest.mark.parametrize("args", [[], [b""], [b"a"], [b"", b""], [b"k", b"\x00" * 300, b"tail"]])
def test_arguments_round_trip(args: list[bytes]) -> None:
    assert unpack_args(pack_args(args), len(args)) == args


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "expected protocol header"),
        (b"ZKC\x02" + RID + b"get", "unsupported ZKC version 2"),
        (b"XYZ\x03" + RID + b"\x01k", "expected protocol header"),
        (HEADER + b"\x00\x00", "request id"),
        (HEADER + RID, "opcode"),
        (HEADER + RID + b"\xff", "unknown opcode 255"),
        (HEADER + RID + b"\x04" + u32(1) + b"k", "ends inside the length of argument 2 of 3"),
        (HEADER + RID + b"\x04" + u32(9) + b"k", "argument 1 of 3 announces 9 bytes"),
        (HEADER + RID + b"\x13extra", "takes no arguments"),
    ],
)
def test_bad_requests(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_request(frame)


def test_handler_answers_bad_input_with_errors() -> None:
    service = Service(Store())
    assert call(service, b"get", b"")[0] == Status.BAD_REQUEST
    assert call(service, b"get", b"k" * 251)[0] == Status.BAD_REQUEST
    assert call(service, b"set", b"k", b"", u32(0))[0] == Status.BAD_REQUEST  # no codec byte
    assert call(service, b"set", b"k", b"\x00v", b"\x00")[0] == Status.BAD_REQUEST  # ttl not u32
    status, message = decode_reply(service.handle(HEADER + RID + b"\x63"))[1:]
    assert status == Status.BAD_REQUEST and b"unknown opcode 99" in message
    _, status, _ = decode_reply(service.handle(b"junk"))
    assert status == Status.BAD_REQUEST
    rid, status, message = decode_reply(service.refuse([encode_request(RID, b"ping", []), b"more"]))
    assert (rid, status) == (RID, Status.BAD_REQUEST) and b"one frame, got 2" in message


def test_handler_commands() -> None:
    service = Service(Store(max_item="1K"))
    assert call(service, b"set", b"k", b"\x02" + b"41", u32(0)) == (Status.OK, b"")
    assert call(service, b"incr", b"k", u64(1)) == (Status.OK, u64(42))
    assert call(service, b"get", b"k") == (Status.OK, b"\x0242")
    status, body = call(service, b"gets", b"k")
    assert status == Status.OK and body[8:] == b"\x0242"
    cas = int.from_bytes(body[:8], "big")
    assert call(service, b"cas", b"k", b"\x00x", u32(0), u64(cas + 1))[0] == Status.EXISTS
    assert call(service, b"get_many", pack_list([b"k", b"missing"])) == (Status.OK, pack_list([b"\x0242", b""]))
    assert call(service, b"set_many", u32(0), pack_list([b"a", b"\x00A", b"b", b"\x00B"])) == (Status.OK, b"")
    assert call(service, b"delete_many", pack_list([b"a", b"zz", b"b"])) == (Status.OK, b"\x00\x01\x00")
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
    assert call(service, b"get", b"")[0] == Status.BAD_REQUEST  # counted as a get, not a hit or a miss
    stats = dict(zip(*[iter(unpack_list(call(service, b"stats")[1]))] * 2, strict=True))
    assert stats[b"cmd_incr"] == b"2" and stats[b"limit_maxbytes"] == b"67108864"
    assert (stats[b"cmd_get"], stats[b"get_hits"], stats[b"get_misses"]) == (b"3", b"3", b"4")
    assert call(service, b"ping")[1] == service.node_id


def test_packed_lists() -> None:
    items = [b"", b"a", b"\x00" * 300]
    assert pack_list(items) == b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01a" + b"\x00\x00\x01\x2c" + b"\x00" * 300
    assert unpack_list(pack_list(items)) == items
    assert unpack_list(b"") == []
    with pytest.raises(ProtocolError, match="inside a length prefix"):
        unpack_list(b"\x00\x00")


def test_bad_request_warnings_are_rate_limited_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    from zmqkit.cache.service import MALFORMED_LOG_INTERVAL, LogLimit, Service
    from zmqkit.cache.store import Store

    now = [0.0]
    service = Service(Store(clock=lambda: now[0]))
    with caplog.at_level("WARNING", logger="zmqkit.cache.service"):
        for _ in range(1000):
            service.handle(b"garbage")
        assert len(caplog.records) == 1 and service.malformed == 1000
        now[0] += MALFORMED_LOG_INTERVAL
        service.handle(b"garbage")
        assert len(caplog.records) == 2 and "999 more from this peer" in caplog.records[1].getMessage()
        limit = LogLimit(lambda: now[0])
        limit.max_peers = 4
        assert all(limit.warn(f"peer{i}", "bad") for i in range(10))  # each peer's first line
        assert not limit.warn("peer9", "bad") and len(limit._peers) == 4  # bounded table
