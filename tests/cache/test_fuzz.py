"""Fuzz: random multipart messages to a node; it answers each with a reply (an error if bad) and keeps serving."""

import struct
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqkit.cache.protocol import COMMANDS
from zmqkit.testing import CacheCluster

HEADER = b"ZKC\x02"
frame = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([HEADER, b"", b"\x00" * 4, b"\x00" * 8, b"\x01v", b"\x0242", b"k" * 251]),
)
head = st.builds(
    lambda rid, cmd: HEADER + rid + cmd, st.binary(min_size=4, max_size=4), st.sampled_from([*COMMANDS, b"x"])
)
message = st.one_of(
    st.lists(frame, min_size=1, max_size=8),
    st.builds(lambda h, args: [h, *args], head, st.lists(frame, max_size=7)),
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
        assert reply[0][:4] == HEADER and len(reply[0]) == 9
        req.send_multipart([HEADER + struct.pack(">I", 7) + b"ping"])
        assert req.poll(5000) and req.recv_multipart()[0] == HEADER + struct.pack(">I", 7) + b"\x00"
    finally:
        req.close(linger=0)
