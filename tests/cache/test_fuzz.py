"""Fuzz: random multipart messages to a node; it answers each with a reply (an error if bad) and keeps serving."""

import struct
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqkit.cache.protocol import COMMANDS
from zmqkit.testing import CacheCluster

HEADER = b"ZKC\x03"
PING = HEADER + struct.pack(">I", 7) + b"\x13"
frame = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([HEADER, b"", b"\x00" * 4, b"\x00" * 8, b"\x01v", b"\x0242", b"k" * 251]),
)
# A well-formed start (header, request id, a known or unknown opcode) followed by random argument bytes.
request = st.builds(
    lambda rid, code, tail: HEADER + rid + bytes([code]) + tail,
    st.binary(min_size=4, max_size=4),
    st.sampled_from([*(code for code, _ in COMMANDS.values()), 0, 99]),
    st.one_of(
        st.binary(max_size=40),
        st.lists(st.sampled_from([b"\x00\x00\x00\x01k", b"\x00\x00\x00\x09", b"\x01v", b"\x00" * 4]), max_size=5).map(
            b"".join
        ),
    ),
)
message = st.one_of(
    st.lists(frame, min_size=1, max_size=8),
    st.lists(request, min_size=1, max_size=3),
    st.builds(lambda r, extra: [r, *extra], request, st.lists(frame, max_size=3)),
)


@pytest.fixture(scope="module")
def node_endpoint() -> Iterator[str]:
    cluster = CacheCluster(1)
    yield cluster.endpoints[0]
    cluster.close()


@pytest.mark.fuzz
@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=message)
def test_node_survives_random_messages(node_endpoint: str, frames: list[bytes]) -> None:
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(node_endpoint)
        req.send_multipart(frames)
        assert req.poll(5000), f"no reply to {frames!r}"
        reply = req.recv_multipart()
        assert len(reply) == 1 and reply[0][:4] == HEADER and len(reply[0]) >= 9
        req.send(PING)
        assert req.poll(5000) and req.recv()[:9] == PING[:8] + b"\x00"
    finally:
        req.close(linger=0)
