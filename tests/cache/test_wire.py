"""A node talked to by plain pyzmq peers, from docs/wire.md alone: REQ, pipelining DEALER, malformed input."""

import struct
from collections.abc import Callable

import pytest
import zmq

from zmqkit.testing import CacheCluster

pytestmark = pytest.mark.timeout(20)

HEADER = b"ZKC\x03"  # opens every request and reply; each is ONE frame
OPCODES = {b"get": 1, b"set": 4, b"incr": 13, b"get_many": 3, b"ping": 19}


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def request(rid: int, command: bytes, *args: bytes) -> bytes:
    """Every argument but the last is length-prefixed; the last runs to the end of the frame."""
    body = b"".join(u32(len(a)) + a for a in args[:-1]) + (args[-1] if args else b"")
    return HEADER + u32(rid) + bytes([OPCODES.get(command, 99)]) + body


@pytest.fixture
def endpoint() -> object:
    cluster = CacheCluster(1)
    yield cluster.endpoints[0]
    cluster.close()


def test_plain_req_peer(endpoint: str, raw_socket: Callable[..., zmq.Socket]) -> None:
    req = raw_socket(zmq.REQ)
    req.connect(endpoint)

    def ask(command: bytes, *args: bytes) -> bytes:
        req.send(request(9, command, *args))
        assert req.poll(5000)
        reply = req.recv_multipart()
        assert len(reply) == 1 and reply[0][:8] == HEADER + u32(9)
        return reply[0][8:]  # status, then the body

    assert ask(b"set", b"greeting", b"\x01hello", u32(0)) == b"\x00"
    assert ask(b"get", b"greeting") == b"\x00\x01hello"
    assert ask(b"get", b"missing") == b"\x01"
    assert ask(b"set", b"n", b"\x0241", u32(0)) == b"\x00"
    assert ask(b"incr", b"n", struct.pack(">Q", 1)) == b"\x00" + struct.pack(">Q", 42)
    keys = b"".join(u32(len(k)) + k for k in (b"greeting", b"missing", b"n"))
    assert ask(b"get_many", keys) == b"\x00" + u32(6) + b"\x01hello" + u32(0) + u32(3) + b"\x0242"
    reply = ask(b"shout", b"x")
    assert reply[0] == 10 and b"unknown opcode 99" in reply[1:]


def test_plain_dealer_pipelines(endpoint: str, raw_socket: Callable[..., zmq.Socket]) -> None:
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(endpoint)
    for i in range(200):
        dealer.send_multipart([b"", request(i, b"set", b"k%d" % i, b"\x02%d" % i, u32(0))])
    for i in range(200):
        dealer.send_multipart([b"", request(1000 + i, b"get", b"k%d" % i)])
    replies = {}
    while len(replies) < 400 and dealer.poll(5000):
        empty, frame = dealer.recv_multipart()
        assert empty == b"" and frame[:4] == HEADER
        replies[frame[4:8]] = frame[8:]
    assert len(replies) == 400
    assert all(replies[u32(1000 + i)] == b"\x00\x02%d" % i for i in range(200))


@pytest.mark.parametrize(
    "frames",
    [
        [b"hello"],
        [b"ZKC\x07" + u32(1) + b"\x01k"],
        [b"ZKC\x02" + u32(1) + b"get", b"k"],
        [HEADER],
        [HEADER + b"\x01"],
        [HEADER + u32(1) + b"\x04" + u32(1) + b"k"],
        [request(1, b"set", b"k", b"", u32(0))],
        [request(1, b"incr", b"k", b"\x01")],
        [HEADER + u32(1) + b"\x0c" + u32(4) + u32(0) + b"\x00\x00\x00\x01k"],
        [request(1, b"get", b"")],
        [request(1, b"get", b"k"), b"a second frame"],
    ],
)
def test_malformed_requests_get_errors_and_the_node_keeps_serving(
    endpoint: str, raw_socket: Callable[..., zmq.Socket], frames: list[bytes]
) -> None:
    req = raw_socket(zmq.REQ)
    req.connect(endpoint)
    req.send_multipart(frames)
    assert req.poll(5000)
    reply = req.recv_multipart()
    assert len(reply) == 1 and reply[0][:4] == HEADER and reply[0][8] == 10  # BAD_REQUEST, with a message
    assert len(reply[0]) > 9
    req.send(request(2, b"ping"))
    assert req.poll(5000) and req.recv()[:9] == HEADER + u32(2) + b"\x00"
