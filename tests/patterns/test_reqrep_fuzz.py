"""Malformed frames never crash either side of request-reply: an error answer or a drop, and serving goes on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqkit.patterns.reqrep.protocol import (
    ERROR,
    HEADER,
    REQUEST,
    ClientProtocol,
    ServerProtocol,
    message,
    parse_error,
    parse_message,
)

frame = st.one_of(
    st.binary(max_size=48),
    st.just(b""),
    st.just(HEADER),
    st.builds(lambda k, rest: HEADER + bytes([k]) + rest, st.sampled_from(b"QRENHWGA\x00"), st.binary(max_size=40)),
    st.builds(lambda k, rest: b"ZKR\x02" + bytes([k]) + rest, st.sampled_from(b"QRH"), st.binary(max_size=40)),
)


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None)
@given(st.lists(frame, max_size=7))
def test_server_answers_or_drops_anything(frames: list[bytes]) -> None:
    proto = ServerProtocol()
    message_in = [b"client", *frames]
    proto.on_message(message_in)
    assert len(proto.outbox) <= 1
    for reply in proto.outbox:
        assert reply[:-1] == message_in[:-1] and reply[-1][:4] == HEADER  # back along the envelope it came with
        if reply[-1][4] == ERROR:
            assert parse_error(parse_message(reply[-1])[4]).remote_type == "ProtocolError"
    # and it still serves a good request afterwards
    proto.outbox.clear()
    assert proto.on_message([b"client", message(REQUEST, 1, 0, b"good", b"x")]) is not None


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None)
@given(st.lists(frame, max_size=7))
def test_client_drops_anything_it_cannot_match(frames: list[bytes]) -> None:
    proto = ClientProtocol({b"tcp://a:1": "tcp://a:1"})
    proto.on_message(b"tcp://a:1", HEADER + b"W\x00\x00\x00\x10")  # ready
    rid = proto.submit(0, b"x", timeout=5.0)
    for frame in frames:
        proto.on_message(b"tcp://a:1", frame)
        proto.on_message(b"stranger", frame)
    proto.next_deadline()  # books the request if no message did
    assert proto.completed == [] and rid in proto.pending  # nothing made up finishes the request
