"""The code against docs/vectors/ (the wire spec's language-neutral test vectors), in both directions: the code
encodes each vector's meaning to exactly its frames, and decodes its frames to its meaning; the ring places every
key as listed. So docs/wire.md, the vectors and the code cannot drift apart (tests/vectors_make.py writes them)."""

from __future__ import annotations

import builtins
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from zmqkit import ProtocolError
from zmqkit.cache import HashRing
from zmqkit.cache.keys import key_bytes
from zmqkit.cache.protocol import Status, decode_reply, decode_request, encode_reply, encode_request, u32
from zmqkit.codecs import CODEC_IDS, get_codec, unpack
from zmqkit.endpoints import parse_endpoints
from zmqkit.patterns import Retry
from zmqkit.patterns.pipeline.protocol import (
    ProducerProtocol,
    Result,
    Task,
    WorkerProtocol,
    decode_message,
    decode_result,
    encode_message,
    encode_result,
)
from zmqkit.patterns.reqrep import protocol as rr

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors"
MINE = ("codecs", "pipeline", "cache", "ring", "reqrep")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def cases(name: str, section: str) -> list[Any]:
    return [pytest.param(e, id=e["name"]) for e in load(name)[section]]


def frames_of(entry: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(f) for f in entry["frames"]]


# -- application values -----------------------------------------------------------------------------------------

CODEC_NAMES = {i: name for name, i in CODEC_IDS.items()}


def need_codec(codec: int) -> None:
    if codec == CODEC_IDS["msgpack"]:
        pytest.importorskip("msgpack", reason="needs the msgpack extra: pip install 'zmqkit[msgpack]'")


def meaning(v: dict[str, Any]) -> Any:
    """The Python value a vector's ``{"codec": id, "payload": hex, <codec name>: meaning}`` stands for."""
    if "bytes" in v:
        return bytes.fromhex(v["bytes"])
    if "int" in v:
        return int(v["int"])
    if "float" in v:
        return struct.unpack(">d", bytes.fromhex(v["float"]))[0]
    return v[CODEC_NAMES[v["codec"]]]


def same(a: Any, b: Any) -> bool:
    """Equal, with nan equal to nan and 0.0 told from -0.0 (a float codec must keep both)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def check_value(v: dict[str, Any], payload: bytes | None = None) -> None:
    """The codec encodes the meaning to the payload and decodes the payload to the meaning."""
    need_codec(v["codec"])
    want = bytes.fromhex(v["payload"])
    if payload is not None:
        assert payload == want, "the frame does not hold the value's payload"
    value = meaning(v)
    assert get_codec(CODEC_NAMES[v["codec"]]).pack(value) == (v["codec"], want)
    assert same(unpack(v["codec"], want), value)


def test_every_vector_file_has_the_common_shape() -> None:
    files = sorted(p.stem for p in VECTORS.glob("*.json"))
    assert set(MINE) <= set(files), f"missing vector files: {set(MINE) - set(files)}"
    for name in files:
        data = load(name)
        assert data.get("capability", name) == name  # files of other capabilities may leave it out
        for section, entries in data.items():
            if isinstance(entries, list) and entries and isinstance(entries[0], dict) and "name" in entries[0]:
                names = [e["name"] for e in entries]
                assert len(set(names)) == len(names), f"{name}.json {section}: names repeat"
                for e in entries:
                    # fanout.json says what an entry is under "meaning", the others under "description"
                    assert e.get("description") or e.get("meaning"), f"{name}.json {e['name']}: says nothing"
                    for frame in e.get("frames", []):
                        assert frame == bytes.fromhex(frame).hex(), f"{name}.json {e['name']}: not lower-case hex"


# -- codecs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", cases("codecs", "entries"))
def test_codec_vectors(entry: dict[str, Any]) -> None:
    payload = bytes.fromhex(entry["payload"])
    if entry["use"] == "invalid":
        with pytest.raises(ProtocolError):
            unpack(entry["codec"], payload)
    elif entry["use"] == "decode":
        assert same(unpack(entry["codec"], payload), meaning(entry))
    else:
        check_value(entry)


# -- pipeline -----------------------------------------------------------------------------------------------------


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def producer(**kwargs: Any) -> ProducerProtocol:
    return ProducerProtocol(clock=Clock(), random=lambda: 0.0, **kwargs)


def worker_encodes(e: dict[str, Any]) -> list[bytes]:
    """The frames zmqkit's worker sends for the meaning of worker->producer vector ``e``."""
    command = e["command"]
    if command == "READY":
        return WorkerProtocol(credit=e["credit"], most=e.get("most", 0)).ready()
    if command == "HB":
        return WorkerProtocol(credit=1).heartbeat()
    if command == "BYE":
        return WorkerProtocol(credit=1).bye()
    w = WorkerProtocol(credit=100)
    if command == "FAIL":
        exc = (
            Retry(e["delay_ms"] / 1000, e["message"])
            if e["type"] == "Retry"
            else getattr(builtins, e["type"])(e["message"])
        )
        w.failed(Task(e["id"], 1, 0, b""), exc)
    else:
        w.acked(e["ids"])
        for r in e["results"]:
            w.succeeded(Task(r["id"], 1, 0, b""), meaning(r), get_codec(CODEC_NAMES[r["codec"]]))
    (out,) = w.flush()
    return out


def producer_holding(ids: list[int]) -> ProducerProtocol:
    """A producer that sent messages 1..max(ids) to worker ``w``."""
    p = producer()
    for n in range(max(ids, default=0)):
        p.accept(0, b"m%d" % (n + 1))
    p.handle([b"w", b"", b"ZKP\x01", b"READY", u32(max(1, len(p.messages)))])
    p.dispatch()
    return p


def test_pipeline_vectors_cover_every_command() -> None:
    commands = {(e["direction"], e["command"]) for e in load("pipeline")["messages"]}
    worker = {("worker->producer", c) for c in ("READY", "HB", "DONE", "FAIL", "BYE")}
    assert commands == worker | {("producer->worker", c) for c in ("TASK", "HELLO", "BYE")}


@pytest.mark.parametrize("entry", [c for c in cases("pipeline", "messages") if c.values[0]["direction"][0] == "w"])
def test_pipeline_worker_messages(entry: dict[str, Any]) -> None:
    frames = frames_of(entry)
    assert worker_encodes(entry) == frames
    command = entry["command"]
    if command == "READY":
        p = producer()
        assert p.handle([b"w", *frames]) == []
        for n in range(entry["credit"] + 1):
            p.accept(0, b"%d" % n)
        (task,) = p.dispatch()
        assert len(WorkerProtocol(credit=1).feed(task[1:])[0]) == entry["credit"]  # exactly the credit, no more
        assert p.peers[b"w"].most == entry.get("most", entry["credit"])
    elif command == "HB":
        p = producer()
        p.handle([b"w", b"", b"ZKP\x01", b"READY", u32(1)])
        assert p.handle([b"w", *frames]) == [] and p.stats()["malformed"] == 0
    elif command == "BYE":
        p = producer()
        p.handle([b"w", b"", b"ZKP\x01", b"READY", u32(1)])
        assert p.handle([b"w", *frames]) == [[b"w", b"", b"ZKP\x01", b"BYE"]]
    elif command == "DONE":
        ids = entry["ids"] + [r["id"] for r in entry["results"]]
        p = producer_holding(ids)
        assert p.handle([b"w", *frames]) == [] and p.stats()["malformed"] == 0
        assert not set(ids) & set(p.messages), "DONE did not finish its ids"
        assert list(p.results) == [Result(r["id"], meaning(r)) for r in entry["results"]]
    else:  # FAIL: the error text as dead letter (one attempt), the delay as the retry timer (more)
        dead = producer_holding([entry["id"]])
        dead.max_attempts = 1
        dead.handle([b"w", *frames])
        assert dead.dead[entry["id"]].error == f"{entry['type']}: {entry['message']}"
        retry = producer_holding([entry["id"]])
        retry.handle([b"w", *frames])
        delay = entry["delay_ms"] / 1000 if entry["delay_ms"] is not None else retry.backoff.delay(1, lambda: 0.0)
        assert retry.next_timer() == pytest.approx(delay)


@pytest.mark.parametrize("entry", [c for c in cases("pipeline", "messages") if c.values[0]["direction"][0] == "p"])
def test_pipeline_producer_messages(entry: dict[str, Any]) -> None:
    frames = frames_of(entry)
    command = entry["command"]
    if command == "TASK":
        tasks = entry["tasks"]
        assert WorkerProtocol(credit=10).feed(frames)[0] == [
            Task(t["id"], t["attempt"], t["codec"], bytes.fromhex(t["payload"])) for t in tasks
        ]
        for t in tasks:
            check_value(t)
        # Encoding: a producer that accepted these payloads (ids from 1), failing each once per extra attempt.
        assert [t["id"] for t in tasks] == list(range(1, len(tasks) + 1))
        p = producer(max_attempts=255)
        for t in tasks:
            p.accept(t["codec"], bytes.fromhex(t["payload"]))
        p.handle([b"w", b"", b"ZKP\x01", b"READY", u32(len(tasks))])
        out = p.dispatch()
        for _ in range(1, max(t["attempt"] for t in tasks)):
            for t in tasks:
                p.handle([b"w", b"", b"ZKP\x01", b"FAIL", struct.pack(">Q", t["id"]), b"0", b"E", b""])
            p.tick()
            out = p.dispatch()
        assert out == [[b"w", *frames]]
    elif command == "HELLO":
        assert producer().handle([b"w", b"", b"ZKP\x01", b"HB"]) == [[b"w", *frames]]
        w = WorkerProtocol(credit=3)
        assert w.feed(frames) == ([], [w.ready()])
    else:  # BYE
        w = WorkerProtocol(credit=3)
        w.bye()
        assert w.feed(frames) == ([], []) and w.closed


@pytest.mark.parametrize("entry", cases("pipeline", "fire_and_forget"))
def test_pipeline_fire_and_forget(entry: dict[str, Any]) -> None:
    (frame,) = frames_of(entry)
    payload = bytes.fromhex(entry["payload"])
    assert encode_message(entry["codec"], payload) == frame
    assert decode_message(frame) == (entry["codec"], payload)
    check_value(entry)


@pytest.mark.parametrize("entry", cases("pipeline", "sink"))
def test_pipeline_sink(entry: dict[str, Any]) -> None:
    payload = bytes.fromhex(entry["payload"])
    assert encode_result(entry["id"], entry["codec"], payload) == frames_of(entry)
    assert decode_result(frames_of(entry)) == (entry["id"], entry["codec"], payload)
    check_value(entry)


@pytest.mark.parametrize("entry", cases("pipeline", "exchanges"))
def test_pipeline_producer_rules(entry: dict[str, Any]) -> None:
    p = producer()
    for v in entry.get("accept", []):
        p.accept(v["codec"], bytes.fromhex(v["payload"]))
    for n, step in enumerate(entry["steps"]):
        ident = bytes.fromhex(step["worker"])
        sent = p.handle([ident, *frames_of(step)]) + p.dispatch()
        want = [[bytes.fromhex(r["to"]), *frames_of(r)] for r in step["replies"]]
        assert sent == want, f"step {n}"
    assert p.stats()["malformed"] == 0


# -- cache --------------------------------------------------------------------------------------------------------


def typed(item: dict[str, Any]) -> Any:
    """The Python key or tuple item a vector's typed notation stands for."""
    ((kind, data),) = item.items()
    if kind in ("str", "bool"):
        return data
    if kind == "none":
        return None
    if kind == "int":
        return int(data)
    if kind == "float":
        return struct.unpack(">d", bytes.fromhex(data))[0]
    if kind == "bytes":
        return bytes.fromhex(data)
    items = [typed(i) for i in data]
    return tuple(items) if kind == "tuple" else items


@pytest.mark.parametrize("entry", cases("cache", "keys"))
def test_cache_keys(entry: dict[str, Any]) -> None:
    assert key_bytes(typed(entry["key"])).hex() == entry["hex"]


def check_field(e: dict[str, Any], raw: bytes) -> None:
    """A request argument or a reply body: its bytes are what its meaning encodes to."""
    assert raw.hex() == e["hex"]
    if "key" in e:
        assert key_bytes(typed(e["key"])) == raw
    if "value" in e:
        v = e["value"]
        body = raw[8:] if "cas" in e else raw  # gets: the cas, then the value
        assert body[:1] == bytes([v["codec"]])
        check_value(v, body[1:])
    if "cas" in e:
        assert struct.unpack(">Q", raw[:8])[0] == e["cas"]
    for name, fmt in (("u32", ">I"), ("u64", ">Q")):
        if name in e:
            assert raw == struct.pack(fmt, e[name])
    if "list" in e:
        from zmqkit.cache.protocol import pack_list, unpack_list

        items = [bytes.fromhex(i) for i in e["list"]]
        assert pack_list(items) == raw and unpack_list(raw) == items
    if "text" in e:
        assert raw.decode() == e["text"]
    if "bytes" in e:
        assert list(raw) == e["bytes"]


@pytest.mark.parametrize("entry", cases("cache", "requests"))
def test_cache_requests(entry: dict[str, Any]) -> None:
    (frame,) = frames_of(entry)
    args = [bytes.fromhex(a["hex"]) for a in entry["args"]]
    rid = u32(entry["id"])
    command = entry["command"].encode()
    assert encode_request(rid, command, args) == frame
    assert decode_request(frame) == (rid, command, args)
    assert frame[8] == entry["opcode"]
    for a, raw in zip(entry["args"], args, strict=True):
        check_field(a, raw)


@pytest.mark.parametrize("entry", cases("cache", "replies"))
def test_cache_replies(entry: dict[str, Any]) -> None:
    (frame,) = frames_of(entry)
    status = Status[entry["status"]]
    assert status == entry["status_code"]
    body = bytes.fromhex(entry["body"]["hex"])
    rid = u32(entry["id"])
    assert encode_reply(rid, status, body) == frame
    assert decode_reply(frame) == (rid, status, body)
    check_field(entry["body"], body)


# -- ring ---------------------------------------------------------------------------------------------------------


def test_ring_places_every_key() -> None:
    data = load("ring")
    ring = HashRing({n["endpoint"]: n["weight"] for n in data["nodes"]}, vnodes=data["vnodes"])
    assert len(data["keys"]) >= 1000
    for k in data["keys"]:
        raw = key_bytes(typed(k["key"]))
        assert raw.hex() == k["hex"], k
        assert ring.get_node(raw) == k["owner"], k
        assert list(ring.iter_nodes(raw)) == k["order"], k
    # The same nodes given in another order make the same ring.
    again = HashRing({n["endpoint"]: n["weight"] for n in reversed(data["nodes"])}, vnodes=data["vnodes"])
    assert all(again.get_node(bytes.fromhex(k["hex"])) == k["owner"] for k in data["keys"])


def test_ring_points_and_tie() -> None:
    import mmh3

    data = load("ring")
    for point in data["points"]:
        assert mmh3.hash(f"{point['endpoint']}#{point['index']}".encode(), signed=False) == point["hash"]
    ties = data["ties"]
    tied = [p["endpoint"] for p in data["points"] if p["hash"] == ties["hash"]]
    assert sorted(tied) == ties["order"] and len(tied) == 2


@pytest.mark.parametrize("entry", load("ring")["endpoints"], ids=lambda e: e["configured"])
def test_ring_endpoint_strings(entry: dict[str, str]) -> None:
    # What a client hashes for an endpoint it was given (CacheClient parses its endpoints this way).
    assert parse_endpoints([entry["configured"]]) == [entry["hashed"]]


# -- request-reply ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", cases("reqrep", "messages"))
def test_reqrep_messages(entry: dict[str, Any]) -> None:
    (frame,) = frames_of(entry)
    kind = entry["kind"]
    assert rr.kind_of(frame) == ord(kind)
    if kind in "HWGA":
        check_control(kind, frame, entry)
        return
    rid = bytes.fromhex(entry["request_id"])
    if kind in "QR":
        v = entry["value"]
        payload = bytes.fromhex(v["payload"])
        check_value(v)
        assert rr.parse_message(frame) == (ord(kind), entry["attempt"], v["codec"], rid, payload)
        assert rr.message(ord(kind), entry["attempt"], v["codec"], rid, payload) == frame
    elif kind == "E":
        err = entry["error"]
        payload = rr.error_payload(err["type"], err["message"], err["traceback"])
        assert rr.message(rr.ERROR, entry["attempt"], 0, rid, payload) == frame
        _, attempt, codec, got_rid, got = rr.parse_message(frame)
        remote = rr.parse_error(got)
        assert (attempt, codec, got_rid) == (entry["attempt"], 0, rid)
        assert (remote.remote_type, remote.message, remote.remote_traceback) == (
            err["type"],
            err["message"],
            err["traceback"],
        )
    else:  # N
        assert rr.parse_message(frame) == (rr.REJECT, entry["attempt"], 0, rid, entry["reason"].encode())
        server = rr.ServerProtocol(max_queue=1, window=0)
        if entry["reason"] == "leaving":
            server.leave()
        else:
            assert server.on_message([b"c", rr.message(rr.REQUEST, 1, 0, b"other", b"")]) is not None
        assert server.on_message([b"c", rr.message(rr.REQUEST, entry["attempt"], 0, rid, b"x")]) is None
        assert server.outbox[-1] == [b"c", frame]


def check_control(kind: str, frame: bytes, entry: dict[str, Any]) -> None:
    """H, W, G, A: made and understood by the protocol objects that send and receive them."""
    server = rr.ServerProtocol(max_queue=entry.get("capacity", 1000))
    client = rr.ClientProtocol({b"s": "tcp://127.0.0.1:1"}, clock=Clock())
    if kind == "H":
        client.tick()
        assert client.outbox == [(b"s", frame)]
        assert server.on_message([b"c", frame]) is None and server.outbox == [[b"c", rr.HEADER + b"W" + u32(1000)]]
    elif kind == "W":
        server.on_message([b"c", rr.HEADER + b"H"])
        assert server.outbox == [[b"c", frame]]
        client.on_message(b"s", frame)
        assert client.servers_state() == {b"s": "ready"} and client.peers[b"s"].capacity == entry["capacity"]
    elif kind == "G":
        server.on_message([b"c", rr.HEADER + b"H"])
        server.leave()
        assert server.outbox[-1] == [b"c", frame]
        client.on_message(b"s", frame)
        assert client.servers_state() == {b"s": "leaving"}
    else:  # A
        client.on_message(b"s", rr.HEADER + b"G")
        assert client.outbox[-1] == (b"s", frame)
        server.on_message([b"c", rr.HEADER + b"H"])
        server.leave()
        assert not server.drained
        server.on_message([b"c", frame])
        assert server.drained


@pytest.mark.parametrize("entry", cases("reqrep", "rpc"))
def test_rpc_calls(entry: dict[str, Any]) -> None:
    (frame,) = frames_of(entry)
    v = entry["value"]
    check_value(v)
    assert meaning(v) == [entry["method"], entry["args"], entry["kwargs"]]
    kind, _, codec, rid, payload = rr.parse_message(frame)
    assert (kind, codec, rid, payload) == (
        rr.REQUEST,
        v["codec"],
        bytes.fromhex(entry["request_id"]),
        bytes.fromhex(v["payload"]),
    )
