"""The fanout encoder and decoder against docs/vectors/fanout.json, the wire format's language-neutral examples."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from zmqkit.patterns.fanout.protocol import (
    HEADER_SIZE,
    HELLO_PREFIX,
    PublisherState,
    SubscriberCounter,
    SubscriberState,
    TopicFilter,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
VECTORS = json.loads((DOCS / "vectors" / "fanout.json").read_text(encoding="utf-8"))
CODEC_NAMES = {0: "bytes", 1: "str", 2: "int", 3: "float", 4: "json", 5: "msgpack"}


def _frames(vector: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(f) for f in vector["frames"]]


def _body(vector: dict[str, Any]) -> Any:
    return bytes.fromhex(vector["body_hex"]) if "body_hex" in vector else vector["body"]


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


ZMQKIT = [v for v in VECTORS["messages"] if v["kind"] == "zmqkit"]
RAW = [v for v in VECTORS["messages"] if v["kind"] == "raw"]


def _needs(vector: dict[str, Any]) -> None:
    if vector.get("codec") == 5:
        pytest.importorskip("msgpack", reason="the msgpack extra is not installed")


@pytest.mark.parametrize("vector", ZMQKIT, ids=_ids(ZMQKIT))
def test_the_encoder_makes_the_vector_frames(vector: dict[str, Any]) -> None:
    _needs(vector)
    state = PublisherState(CODEC_NAMES[vector["codec"]], publisher_id=bytes.fromhex(vector["publisher"]))
    for _ in range(vector["seq"]):
        frames = state.encode(vector["topic"], _body(vector))
    assert [f.hex() for f in frames] == vector["frames"]


@pytest.mark.parametrize("vector", ZMQKIT + RAW, ids=_ids(ZMQKIT + RAW))
def test_the_decoder_reads_the_vector_frames(vector: dict[str, Any]) -> None:
    _needs(vector)
    state = SubscriberState(TopicFilter([""]))
    msg = state.feed(_frames(vector))
    assert msg is not None and state.malformed == 0
    assert (msg.topic, msg.body) == (vector["topic"], _body(vector))
    if vector["kind"] == "zmqkit":
        assert msg.publisher is not None and (msg.publisher.hex(), msg.seq) == (vector["publisher"], vector["seq"])
        assert len(bytes.fromhex(vector["frames"][1])) >= VECTORS["header_size"] == HEADER_SIZE
    else:
        assert (msg.publisher, msg.seq) == (None, None)


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=_ids(VECTORS["malformed"]))
def test_malformed_vectors_are_counted_and_skipped(vector: dict[str, Any]) -> None:
    state = SubscriberState(TopicFilter([""]))
    assert state.feed(_frames(vector)) is None
    assert state.malformed == 1 and state.received == 0


def test_the_hello_is_one_13_byte_frame_and_counts_a_subscriber() -> None:
    hello = VECTORS["hello"]
    sid = bytes.fromhex(hello["subscriber"])
    topic = bytes.fromhex(hello["topic"])
    assert topic == HELLO_PREFIX + sid == b"\xffZKF\x01" + sid and len(topic) == 13
    counter = SubscriberCounter()
    assert counter.feed(bytes.fromhex(hello["subscribe_notice"])) and counter.count == 1
    assert not counter.feed(bytes.fromhex(hello["unsubscribe_notice"])) and counter.count == 0


def test_wire_md_states_the_sizes_the_code_uses() -> None:
    wire = (DOCS / "wire.md").read_text(encoding="utf-8")
    fanout = wire[wire.index("## Fanout") : wire.index("## Request-reply")]
    assert f"{HEADER_SIZE}-byte header" in fanout
    assert re.search(r"one 13-byte frame", fanout) and len(HELLO_PREFIX) + 8 == 13
    assert "docs/vectors/fanout.json" in fanout
