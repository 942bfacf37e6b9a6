"""A node talked to by plain pyzmq peers, from docs/wire.md alone: REQ, pipelining DEALER, malformed input."""

import struct
from collections.abc import Callable

import pytest
import zmq

from zmqkit.testing import CacheCluster

pytestmark = pytest.mark.timeout(20)

HEADER = b"ZKC\x02"  # opens the first frame of every request and reply


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


@pytest.fixture
def endpoint() -> object:
    cluster = CacheCluster(1)
    yield cluster.endpoints[0]
    cluster.close()


def test_plain_req_peer(endpoint: str, raw_socket: Callable[..., zmq.Socket]) -> None:
    req = raw_socket(zmq.REQ)
    req.connect(endpoint)

    def ask(command: bytes, *args: bytes) -> list[bytes]:
        req.send_multipart([HEADER + u32(9) + command, *args])
        assert req.poll(5000)
        reply = req.recv_multipart()
        assert reply[0][:8] == HEADER + u32(9)
        return [reply[0][8:], *reply[1:]]

    assert ask(b"set", b"greeting", b"\x01hello", u32(0)) == [b"\x00"]
    assert ask(b"get", b"greeting") == [b"\x00", b"\x01hello"]
    assert ask(b"get", b"missing") == [b"\x01"]
    assert ask(b"set", b"n", b"\x0241", u32(0)) == [b"\x00"]
    assert ask(b"incr", b"n", struct.pack(">Q", 1)) == [b"\x00", struct.pack(">Q", 42)]
    keys = b"".join(struct.pack(">I", len(k)) + k for k in (b"greeting", b"missing", b"n"))
    status, values = ask(b"get_many", keys)
    assert status == b"\x00"
    assert values == struct.pack(">I", 6) + b"\x01hello" + struct.pack(">I", 0) + struct.pack(">I", 3) + b"\x0242"
    status, message = ask(b"shout", b"x")
    assert status == b"\x0a" and b"unknown command" in message


def test_plain_dealer_pipelines(endpoint: str, raw_socket: Callable[..., zmq.Socket]) -> None:
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(endpoint)
    for i in range(200):
        dealer.send_multipart([b"", HEADER + u32(i) + b"set", b"k%d" % i, b"\x02%d" % i, u32(0)])
    for i in range(200):
        dealer.send_multipart([b"", HEADER + u32(1000 + i) + b"get", b"k%d" % i])
    replies = {}
    while len(replies) < 400 and dealer.poll(5000):
        frames = dealer.recv_multipart()
        assert frames[1][:4] == HEADER
        replies[frames[1][4:8]] = frames[1][8:], frames[2:]
    assert len(replies) == 400
    assert all(replies[u32(1000 + i)] == (b"\x00", [b"\x02%d" % i]) for i in range(200))


@pytest.mark.parametrize(
    "frames",
    [
        [b"hello"],
        [b"ZKC\x07" + u32(1) + b"get", b"k"],
        [b"ZKC\x01", u32(1) + b"get", b"k"],
        [HEADER],
        [HEADER + b"\x01"],
        [HEADER + u32(1) + b"set", b"k"],
        [HEADER + u32(1) + b"set", b"k", b"", u32(0)],
        [HEADER + u32(1) + b"incr", b"k", b"\x01"],
        [HEADER + u32(1) + b"set_many", u32(0), b"\x00\x00\x00\x01k"],
        [HEADER + u32(1) + b"get", b""],
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
    assert reply[0][:4] == HEADER and len(reply[0]) == 9 and reply[0][8] == 10  # BAD_REQUEST, with a message
    assert reply[1]
    req.send_multipart([HEADER + u32(2) + b"ping"])
    assert req.poll(5000) and req.recv_multipart()[0] == HEADER + u32(2) + b"\x00"
