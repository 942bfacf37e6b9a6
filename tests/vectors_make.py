"""Write docs/vectors/*.json (pipeline, cache, ring, reqrep, codecs): the wire spec's test vectors.

Not run by the suite (tests/core/test_vectors.py checks the code against the files this writes). The frames are
built here from docs/wire.md with struct and mmh3 alone, not with zmqkit's encoders, so writing the vectors is
itself a check of the code against the text. Run from the project root, then review the diff:

    .venv/bin/python tests/vectors_make.py
"""

from __future__ import annotations

import bisect
import json
import struct
from pathlib import Path
from typing import Any

import mmh3
import msgpack

OUT = Path(__file__).resolve().parents[1] / "docs" / "vectors"
ZKP, ZKC, ZKR = b"ZKP\x01", b"ZKC\x03", b"ZKR\x03"


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def f64(x: float) -> str:
    """A float as its IEEE 754 binary64 bits, 16 hex digits (big-endian): exact, and valid JSON for nan/inf."""
    return struct.pack(">d", x).hex()


def hexes(frames: list[bytes]) -> list[str]:
    return [f.hex() for f in frames]


# -- application values: {"codec": id, "payload": hex, <name>: meaning} ------------------------------------


def value(codec: int, meaning: Any) -> tuple[bytes, dict[str, Any]]:
    """The payload of ``meaning`` under ``codec`` (as docs/wire.md's codec table says) and its vector form."""
    if codec == 0:
        payload, shown = meaning, {"bytes": meaning.hex()}
    elif codec == 1:
        payload, shown = meaning.encode(), {"str": meaning}
    elif codec == 2:
        payload, shown = str(meaning).encode(), {"int": str(meaning)}
    elif codec == 3:
        payload, shown = repr(meaning).encode(), {"float": f64(meaning)}
    elif codec == 4:
        payload = json.dumps(meaning, separators=(",", ":"), ensure_ascii=False).encode()
        shown = {"json": meaning}
    elif codec == 5:
        payload, shown = msgpack.packb(meaning, use_bin_type=True), {"msgpack": meaning}
    else:
        raise ValueError(codec)
    return payload, {"codec": codec, "payload": payload.hex(), **shown}


# -- codecs ---------------------------------------------------------------------------------------------------


def codecs() -> dict[str, Any]:
    both: list[tuple[str, str, int, Any]] = [
        ("bytes", "bare bytes, unchanged", 0, b"\x00\xffzmq"),
        ("bytes-empty", "an empty payload", 0, b""),
        ("str", "UTF-8 text", 1, "héllo ✓"),
        ("str-empty", "the empty string", 1, ""),
        ("int", "ASCII decimal", 2, 42),
        ("int-negative", "a leading minus", 2, -7),
        ("int-zero", "zero", 2, 0),
        ("int-big", "no size limit in the codec (a cache incr needs a u64)", 2, 2**64 + 1),
        ("float", "shortest round-trip digits", 3, 1.5),
        ("float-tenth", "0.1 is 0.1, not 0.1000000000000000055511151231257827", 3, 0.1),
        ("float-whole", "a whole number keeps its '.0'", 3, 3.0),
        ("float-negative-zero", "the sign of zero is kept", 3, -0.0),
        ("float-large", "exponent form from 1e16 up: mantissa without '.', exponent sign and 2+ digits", 3, 1e16),
        ("float-below-1e16", "the largest magnitude written without an exponent", 3, 1e15),
        ("float-small", "exponent form below 1e-4", 3, 1.5e-05),
        ("float-1e-4", "1e-4 itself is written without an exponent", 3, 0.0001),
        ("float-17-digits", "17 significant digits where fewer do not round-trip", 3, 0.30000000000000004),
        ("float-max", "the largest finite float64", 3, 1.7976931348623157e308),
        ("float-min-subnormal", "the smallest subnormal: a 3-digit exponent", 3, 5e-324),
        ("float-inf", "infinity", 3, float("inf")),
        ("float-minus-inf", "minus infinity", 3, float("-inf")),
        ("float-nan", "not a number: always 'nan' (no sign, no payload)", 3, float("nan")),
        ("json", "compact JSON (no spaces), non-ASCII as UTF-8, not \\u escapes", 4, {"a": [1, 2.5, None], "é": "✓"}),
        ("json-string", "a JSON text may be any value", 4, "hi"),
        ("msgpack", "msgpack: str as str type, bytes as bin type", 5, {"a": [1, 2.5, None], "b": True}),
    ]
    entries = []
    for name, description, codec, meaning in both:
        _, shown = value(codec, meaning)
        entries.append({"name": name, "description": description, "use": "both", **shown})
    # Strings a receiver must accept though zmqkit never sends them (docs/wire.md, "Codec 3").
    for text, x, why in [
        ("5", 5.0, "no fraction, no exponent"),
        ("1e5", 1e5, "an exponent without a sign"),
        ("1E+5", 1e5, "an upper-case E"),
        ("2.50", 2.5, "more digits than needed"),
        ("0.1000000000000000055511151231257827", 0.1, "many digits: rounded to the nearest float64"),
        ("-1.0e-5", -1e-05, "a fraction and an exponent"),
        ("00012.5", 12.5, "leading zeros"),
    ]:
        entries.append(
            {
                "name": f"float-accept-{text}",
                "description": why,
                "use": "decode",
                "codec": 3,
                "payload": text.encode().hex(),
                "float": f64(x),
            }
        )
    for codec, payload, why in [
        (3, b"", "empty"),
        (3, b"one", "not a number"),
        (3, b"1.5.2", "two points"),
        (3, b"0x1p3", "hexadecimal"),
        (3, b"1e", "an exponent without digits"),
        (2, b"1.5", "an int payload with a fraction"),
        (2, b"", "an empty int payload"),
        (1, b"\xff", "a str payload that is not UTF-8"),
        (4, b"{", "JSON that does not parse"),
        (9, b"x", "an unknown codec id"),
    ]:
        entries.append(
            {
                "name": f"invalid-{codec}-{payload.hex() or 'empty'}",
                "description": f"refused: {why}",
                "use": "invalid",
                "codec": codec,
                "payload": payload.hex(),
            }
        )
    return {
        "capability": "codecs",
        "spec": "wire.md#conventions-shared-by-all-capabilities",
        "entries": entries,
    }


# -- pipeline -------------------------------------------------------------------------------------------------


def dealer(command: bytes, *rest: bytes) -> list[bytes]:
    """A pipeline message as a worker's DEALER sends or receives it (a ROUTER sees the routing id first)."""
    return [b"", ZKP, command, *rest]


def task_record(msg_id: int, attempt: int, codec: int, payload: bytes) -> bytes:
    return struct.pack(">QIBI", msg_id, attempt, codec, len(payload)) + payload


def pipeline() -> dict[str, Any]:
    messages: list[dict[str, Any]] = []

    def add(name: str, description: str, direction: str, frames: list[bytes], **meaning: Any) -> None:
        messages.append(
            {"name": name, "description": description, "direction": direction, "frames": hexes(frames), **meaning}
        )

    w2p, p2w = "worker->producer", "producer->worker"
    add("ready", "I take 16 messages", w2p, dealer(b"READY", u32(16)), command="READY", credit=16)
    add(
        "ready-most",
        "I take 4, and up to 64 while I keep up",
        w2p,
        dealer(b"READY", u32(4), u32(64)),
        command="READY",
        credit=4,
        most=64,
    )
    add("hb", "heartbeat", w2p, dealer(b"HB"), command="HB")
    add(
        "done-ids",
        "messages 1, 2 and 3 finished with no result",
        w2p,
        dealer(b"DONE", u64(1) + u64(2) + u64(3)),
        command="DONE",
        ids=[1, 2, 3],
        results=[],
    )
    results = []
    frames = dealer(b"DONE", u64(1))
    for msg_id, codec, meaning in [(2, 4, {"total": 3}), (3, 1, "done"), (4, 0, b"\x00\x01")]:
        payload, shown = value(codec, meaning)
        frames += [u64(msg_id) + bytes([codec]), payload]
        results.append({"id": msg_id, **shown})
    add(
        "done-results",
        "message 1 finished with no result; 2, 3 and 4 returned values",
        w2p,
        frames,
        command="DONE",
        ids=[1],
        results=results,
    )
    payload, shown = value(2, 99)
    add(
        "done-result-only",
        "an empty ids frame, then one result",
        w2p,
        dealer(b"DONE", b"", u64(5) + b"\x02", payload),
        command="DONE",
        ids=[],
        results=[{"id": 5, **shown}],
    )
    add(
        "fail",
        "the handler of message 7 raised ValueError: the producer's backoff decides",
        w2p,
        dealer(b"FAIL", u64(7), b"", b"ValueError", b"bad input"),
        command="FAIL",
        id=7,
        delay_ms=None,
        type="ValueError",
        message="bad input",
    )
    add(
        "fail-retry",
        "the handler raised Retry(delay=1.5): try again in 1500 ms",
        w2p,
        dealer(b"FAIL", u64(8), b"1500", b"Retry", b"later"),
        command="FAIL",
        id=8,
        delay_ms=1500,
        type="Retry",
        message="later",
    )
    add("bye-worker", "graceful stop: send me nothing more", w2p, dealer(b"BYE"), command="BYE")
    records = [(1, 1, 0, b"job-1"), (2, 1, 1, b"two"), (3, 1, 4, b'{"n":3}')]
    tasks = []
    for msg_id, attempt, codec, payload in records:
        meaning = payload if codec == 0 else payload.decode() if codec == 1 else json.loads(payload)
        tasks.append({"id": msg_id, "attempt": attempt, **value(codec, meaning)[1]})
    add(
        "task",
        "a batch of three messages in one frame",
        p2w,
        dealer(b"TASK", b"".join(task_record(*r) for r in records)),
        command="TASK",
        tasks=tasks,
    )
    add(
        "task-retry",
        "message 1 again, second attempt",
        p2w,
        dealer(b"TASK", task_record(1, 2, 0, b"job-1")),
        command="TASK",
        tasks=[{"id": 1, "attempt": 2, **value(0, b"job-1")[1]}],
    )
    add(
        "task-empty-payload",
        "a message with an empty payload",
        p2w,
        dealer(b"TASK", task_record(1, 1, 0, b"")),
        command="TASK",
        tasks=[{"id": 1, "attempt": 1, **value(0, b"")[1]}],
    )
    add("hello", "I do not know you: answer READY (or BYE if stopping)", p2w, dealer(b"HELLO"), command="HELLO")
    add("bye-producer", "answer to BYE: nothing more on this connection", p2w, dealer(b"BYE"), command="BYE")

    # Fire-and-forget PUSH/PULL frames and sink messages.
    plain = []
    for name, description, codec, meaning in [
        ("bare", "bare bytes are the payload itself", 0, b"job"),
        ("bare-empty", "an empty frame is an empty bytes payload", 0, b""),
        ("bytes-with-header", "bytes that start with ZKP\\x01 get the header and codec 0", 0, ZKP + b"x"),
        ("str", "any other codec: header, codec byte, payload", 1, "job"),
        ("json", "JSON", 4, {"n": 1}),
    ]:
        payload, shown = value(codec, meaning)
        frame = payload if codec == 0 and not payload.startswith(ZKP) else ZKP + bytes([codec]) + payload
        plain.append({"name": name, "description": description, "frames": [frame.hex()], **shown})
    payload, shown = value(1, "ok")
    sink = [
        {
            "name": "sink-result",
            "description": "the result of message 9, pushed to a Sink",
            "frames": hexes([ZKP, b"RESULT", u64(9) + b"\x01", payload]),
            "id": 9,
            **shown,
        },
        {
            "name": "sink-fire-and-forget",
            "description": "a fire-and-forget worker's result: id 0",
            "frames": hexes([ZKP, b"RESULT", u64(0) + b"\x00", b"r"]),
            "id": 0,
            **value(0, b"r")[1],
        },
    ]

    # What a producer must answer (rules in docs/wire.md): worker messages in, producer messages out.
    def step(worker: str, frames: list[bytes], *replies: tuple[str, list[bytes]]) -> dict[str, Any]:
        return {
            "worker": worker.encode().hex(),
            "frames": hexes(frames),
            "replies": [{"to": to.encode().hex(), "frames": hexes(f)} for to, f in replies],
        }

    accept = {"accept": [value(0, b"a")[1], value(0, b"b")[1]]}
    exchanges = [
        {
            "name": "unknown-hb",
            "description": "a heartbeat from a worker the producer does not know: HELLO",
            "steps": [step("w1", dealer(b"HB"), ("w1", dealer(b"HELLO")))],
        },
        {
            "name": "unknown-fail",
            "description": "FAIL from an unknown worker: HELLO; the FAIL itself is ignored",
            "steps": [step("w1", dealer(b"FAIL", u64(1), b"", b"E", b"x"), ("w1", dealer(b"HELLO")))],
        },
        {
            "name": "unknown-command",
            "description": "even an unknown command from an unknown worker gets HELLO",
            "steps": [step("w1", dealer(b"NOPE"), ("w1", dealer(b"HELLO")))],
        },
        {
            "name": "unknown-bye",
            "description": "BYE from an unknown worker: BYE",
            "steps": [step("w1", dealer(b"BYE"), ("w1", dealer(b"BYE")))],
        },
        {
            "name": "unknown-done",
            "description": "DONE from an unknown worker still finishes its ids (here message 1,"
            " not yet sent to anyone), and is answered with HELLO; the worker's READY then gets only message 2",
            **accept,
            "steps": [
                step("w1", dealer(b"DONE", u64(1)), ("w1", dealer(b"HELLO"))),
                step("w1", dealer(b"READY", u32(5)), ("w1", dealer(b"TASK", task_record(2, 1, 0, b"b")))),
            ],
        },
        {
            "name": "ready-twice",
            "description": "a READY from a worker the producer knows is ignored (no new credit)",
            **accept,
            "steps": [
                step("w1", dealer(b"READY", u32(1)), ("w1", dealer(b"TASK", task_record(1, 1, 0, b"a")))),
                step("w1", dealer(b"READY", u32(1))),
            ],
        },
        {
            "name": "bye-known",
            "description": "BYE from a known worker: BYE; nothing more is sent to it, and it is"
            " forgotten once it has finished what it holds",
            **accept,
            "steps": [
                step("w1", dealer(b"READY", u32(1)), ("w1", dealer(b"TASK", task_record(1, 1, 0, b"a")))),
                step("w1", dealer(b"BYE"), ("w1", dealer(b"BYE"))),
                step("w1", dealer(b"HB")),
                step("w1", dealer(b"DONE", u64(1))),
                step("w1", dealer(b"HB"), ("w1", dealer(b"HELLO"))),
            ],
        },
    ]
    return {
        "capability": "pipeline",
        "spec": "wire.md#pipeline",
        "messages": messages,
        "fire_and_forget": plain,
        "sink": sink,
        "exchanges": exchanges,
    }


# -- cache ----------------------------------------------------------------------------------------------------


def canonical(item: dict[str, Any]) -> bytes:
    """docs/wire.md's canonical encoding of a typed item (see typed() for the notation)."""
    ((kind, data),) = item.items()
    if kind == "none":
        return b"N"
    if kind == "bool":
        return b"T" if data else b"F"
    if kind == "int":
        return b"i" + data.encode() + b";"
    if kind == "float":
        return b"f" + repr(struct.unpack(">d", bytes.fromhex(data))[0]).encode() + b";"
    if kind == "str":
        raw = data.encode()
        return b"s%d:" % len(raw) + raw
    if kind == "bytes":
        raw = bytes.fromhex(data)
        return b"b%d:" % len(raw) + raw
    if kind in ("tuple", "list"):
        return (b"(" if kind == "tuple" else b"[") + b"%d:" % len(data) + b"".join(canonical(i) for i in data)
    raise ValueError(kind)


def key_wire(key: dict[str, Any]) -> bytes:
    """A typed key's bytes on the wire (docs/wire.md, cache, "Keys")."""
    ((kind, data),) = key.items()
    if kind == "str":
        return data.encode()
    if kind == "bytes":
        return bytes.fromhex(data)
    if kind == "int":
        return b"\xffi" + data.encode()
    if kind == "tuple":
        text = canonical(key)
        return b"\xfft" + text if len(text) <= 248 else b"\xffh" + mmh3.hash_bytes(text).hex().encode()
    raise ValueError(kind)


def args_wire(args: list[bytes]) -> bytes:
    return b"".join(u32(len(a)) + a for a in args[:-1]) + (args[-1] if args else b"")


def lst(items: list[bytes]) -> bytes:
    return b"".join(u32(len(i)) + i for i in items)


def cache() -> dict[str, Any]:
    keys = []
    for name, description, key in [
        ("str", "a str key: its UTF-8", {"str": "user:42"}),
        ("str-unicode", "non-ASCII text", {"str": "clé"}),
        ("bytes", "a bytes key: as it is", {"bytes": "00017a"}),
        ("int", "an int key", {"int": "5"}),
        ("int-negative", "a negative int key", {"int": "-5"}),
        ("int-zero", "zero", {"int": "0"}),
        ("tuple", "a tuple key (cachetools' hashkey)", {"tuple": [{"str": "user"}, {"int": "42"}]}),
        (
            "tuple-mixed",
            "every item type",
            {
                "tuple": [
                    {"none": None},
                    {"bool": True},
                    {"bool": False},
                    {"float": f64(1.5)},
                    {"bytes": "ff00"},
                    {"list": [{"int": "-1"}]},
                    {"tuple": []},
                ]
            },
        ),
        (
            "tuple-long",
            "a tuple whose encoding is above 248 bytes: its murmur3 x64 128-bit hash",
            {"tuple": [{"str": "x" * 250}]},
        ),
    ]:
        keys.append({"name": name, "description": description, "key": key, "hex": key_wire(key).hex()})

    requests: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []

    def arg(name: str, raw: bytes, **meaning: Any) -> dict[str, Any]:
        return {"name": name, "hex": raw.hex(), **meaning}

    def key_arg(text: str) -> dict[str, Any]:
        return arg("key", text.encode(), key={"str": text})

    def val_arg(codec: int, meaning: Any) -> dict[str, Any]:
        payload, shown = value(codec, meaning)
        return arg("value", bytes([codec]) + payload, value=shown)

    def num(name: str, n: int, width: int) -> dict[str, Any]:
        return arg(name, u32(n) if width == 4 else u64(n), **{"u32" if width == 4 else "u64": n})

    def req(name: str, description: str, rid: int, command: str, opcode: int, args: list[dict[str, Any]]) -> None:
        frame = ZKC + u32(rid) + bytes([opcode]) + args_wire([bytes.fromhex(a["hex"]) for a in args])
        requests.append(
            {
                "name": name,
                "description": description,
                "frames": [frame.hex()],
                "id": rid,
                "command": command,
                "opcode": opcode,
                "args": args,
            }
        )

    keys_list = [b"a", b"b", b"missing"]
    req("get", "get of key greeting", 7, "get", 1, [key_arg("greeting")])
    req(
        "set",
        "set greeting to the str 'hi', no expiry (docs/wire.md's example)",
        7,
        "set",
        4,
        [key_arg("greeting"), val_arg(1, "hi"), num("ttl", 0, 4)],
    )
    req(
        "set-int-key",
        "set of an int key 5 to the int 10, 60 s",
        8,
        "set",
        4,
        [arg("key", b"\xffi5", key={"int": "5"}), val_arg(2, 10), num("ttl", 60, 4)],
    )
    req("gets", "get with the cas token", 9, "gets", 2, [key_arg("k")])
    req(
        "get-many",
        "three keys at once",
        10,
        "get_many",
        3,
        [arg("keys", lst(keys_list), list=[k.hex() for k in keys_list])],
    )
    req(
        "cas",
        "store if the item's cas is still 77",
        11,
        "cas",
        9,
        [key_arg("k"), val_arg(4, [1, 2]), num("ttl", 0, 4), num("cas", 77, 8)],
    )
    req("append", "raw bytes after the payload (no codec byte)", 12, "append", 7, [key_arg("k"), arg("data", b"xyz")])
    req("delete", "delete", 13, "delete", 10, [key_arg("k")])
    req("delete-many", "delete two keys", 14, "delete_many", 11, [arg("keys", lst([b"a", b"b"]), list=["61", "62"])])
    pairs = [b"a", b"\x01A", b"b", b"\x02" + b"2"]
    req(
        "set-many",
        "two keys, 300 s (the list alternates key, value)",
        15,
        "set_many",
        12,
        [num("ttl", 300, 4), arg("items", lst(pairs), list=[p.hex() for p in pairs])],
    )
    req("incr", "add 5", 16, "incr", 13, [key_arg("n"), num("delta", 5, 8)])
    req(
        "touch",
        "new ttl: an absolute unix time (above 30 days)",
        17,
        "touch",
        15,
        [key_arg("k"), num("ttl", 2592001, 4)],
    )
    req("flush-all", "no arguments", 18, "flush_all", 16, [])
    req("stats", "no arguments", 19, "stats", 17, [])
    req("ping", "request id 0xfffffffe: any 4 bytes", 0xFFFFFFFE, "ping", 19, [])
    req("lease-get", "a lease for 2000 ms on a miss", 20, "lease_get", 20, [key_arg("k"), num("lease_ms", 2000, 4)])
    req(
        "lease-set",
        "fill the lease with token 3",
        21,
        "lease_set",
        21,
        [key_arg("k"), val_arg(0, b"v"), num("ttl", 0, 4), num("token", 3, 8)],
    )

    def rep(name: str, description: str, rid: int, status: str, code: int, body: bytes, **meaning: Any) -> None:
        frame = ZKC + u32(rid) + bytes([code]) + body
        replies.append(
            {
                "name": name,
                "description": description,
                "frames": [frame.hex()],
                "id": rid,
                "status": status,
                "status_code": code,
                "body": {"hex": body.hex(), **meaning},
            }
        )

    payload, shown = value(1, "hi")
    rep("ok-empty", "OK with no body (set, delete, ...)", 7, "OK", 0, b"")
    rep("value", "a get hit: codec byte then payload", 7, "OK", 0, b"\x01" + payload, value=shown)
    rep("not-found", "a miss", 7, "NOT_FOUND", 1, b"")
    rep("gets-value", "cas u64 then the value", 9, "OK", 0, u64(77) + b"\x01" + payload, cas=77, value=shown)
    items = [b"\x01A", b"", b"\x022"]
    rep("get-many", "a value, a miss (empty item), a value", 10, "OK", 0, lst(items), list=[i.hex() for i in items])
    rep("delete-many", "one byte per key: deleted, not found", 14, "OK", 0, b"\x00\x01", bytes=[0, 1])
    rep("incr", "the new value, u64", 16, "OK", 0, u64(15), u64=15)
    rep("lease", "LEASED: you fill it, token 3", 20, "LEASED", 4, u64(3), u64=3)
    rep("wait", "WAIT: another client fills it", 20, "WAIT", 5, b"")
    rep("exists", "cas lost: changed since", 11, "EXISTS", 3, b"")
    rep("not-stored", "add of a present key", 12, "NOT_STORED", 2, b"")
    rep(
        "bad-request",
        "an error status: the body is a UTF-8 message",
        0,
        "BAD_REQUEST",
        10,
        b"unknown opcode 99",
        text="unknown opcode 99",
    )
    rep(
        "too-large",
        "the message names the node's limit",
        8,
        "TOO_LARGE",
        11,
        b"value is too large",
        text="value is too large",
    )
    stats = [b"uptime", b"12", b"items", b"3"]
    rep("stats", "name, value, ... as a list, ASCII", 19, "OK", 0, lst(stats), list=[s.hex() for s in stats])
    rep("ping", "the node id: 8 bytes", 0xFFFFFFFE, "OK", 0, bytes(range(8)), node_id=bytes(range(8)).hex())
    return {"capability": "cache", "spec": "wire.md#cache", "keys": keys, "requests": requests, "replies": replies}


# -- ring -----------------------------------------------------------------------------------------------------

NODES = {
    "tcp://127.0.0.1:11311": 1,
    "tcp://localhost:11311": 1,  # the same node to a socket, another node to the ring
    "tcp://10.0.0.3:11311": 2,
    "tcp://10.0.0.4:12045": 1,  # its point 133 has the same hash as localhost's point 161
}
VNODES = 1000


def ring() -> dict[str, Any]:
    points = sorted(
        (mmh3.hash(f"{node}#{i}".encode(), signed=False), node) for node, w in NODES.items() for i in range(VNODES * w)
    )
    hashes = [h for h, _ in points]

    def order(raw: bytes) -> list[str]:
        start = bisect.bisect_right(hashes, mmh3.hash(raw, signed=False))
        seen: list[str] = []
        for j in range(len(points)):
            node = points[(start + j) % len(points)][1]
            if node not in seen:
                seen.append(node)
        return seen

    typed: list[dict[str, Any]] = [{"str": f"user:{n}"} for n in range(900)]
    typed += [{"int": str(n)} for n in range(-25, 25)]
    typed += [{"bytes": mmh3.hash_bytes(b"%d" % n)[:6].hex()} for n in range(60)]
    typed = [k for k in typed if not k.get("bytes", "").startswith("ff")][:1000]
    tied = 1976965363
    below = max(h for h in hashes if h < tied)
    # A key whose hash falls on the tied arc, and one whose hash equals the tied points' hash.
    tie_key = next(f"tie:{n}" for n in range(10**6) if below < mmh3.hash(f"tie:{n}".encode(), signed=False) < tied)
    on_point = "tcp://localhost:11311#161"
    keys = []
    for key in [*typed, {"str": tie_key}, {"str": on_point}]:
        raw = key_wire(key)
        nodes = order(raw)
        keys.append(
            {"key": key, "hex": raw.hex(), "hash": mmh3.hash(raw, signed=False), "owner": nodes[0], "order": nodes}
        )
    return {
        "capability": "ring",
        "spec": "wire.md#sharding-what-zmqkit-clients-do-other-clients-should-do-the-same-to-share-keys-with-them",
        "vnodes": VNODES,
        "nodes": [{"endpoint": n, "weight": w} for n, w in NODES.items()],
        "points": [
            {"endpoint": n, "index": i, "hash": mmh3.hash(f"{n}#{i}".encode(), signed=False)}
            for n, w in NODES.items()
            for i in (0, 1, VNODES * w - 1)
        ]
        + [
            {"endpoint": "tcp://10.0.0.4:12045", "index": 133, "hash": tied},
            {"endpoint": "tcp://localhost:11311", "index": 161, "hash": tied},
        ],
        "ties": {
            "hash": tied,
            "order": ["tcp://10.0.0.4:12045", "tcp://localhost:11311"],
            "description": f"two points share hash {tied}; they are ordered by endpoint (bytewise), so key "
            f"{tie_key!r} (hash between the point below, {below}, and {tied}) belongs to tcp://10.0.0.4:12045, "
            f"and key {on_point!r}, whose hash equals {tied}, to the next point strictly above",
        },
        "endpoints": [
            {"configured": "tcp://cache1:01131", "hashed": "tcp://cache1:1131"},
            {"configured": " tcp://cache1:11311 ", "hashed": "tcp://cache1:11311"},
            {"configured": "tcp://Cache1:11311", "hashed": "tcp://Cache1:11311"},
            {"configured": "tcp://[::1]:11311", "hashed": "tcp://[::1]:11311"},
            {"configured": "ipc:///run/cache.sock", "hashed": "ipc:///run/cache.sock"},
        ],
        "keys": keys,
    }


# -- request-reply --------------------------------------------------------------------------------------------


def reqrep() -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    rid = bytes(range(8)) + u64(1)

    def msg(kind: str, attempt: int, codec: int, request_id: bytes, payload: bytes) -> bytes:
        return ZKR + kind.encode() + bytes([attempt, codec, len(request_id)]) + request_id + payload

    def add(name: str, description: str, direction: str, frame: bytes, **meaning: Any) -> None:
        messages.append(
            {"name": name, "description": description, "direction": direction, "frames": [frame.hex()], **meaning}
        )

    c2s, s2c = "client->server", "server->client"
    add("hello", "are you taking work?", c2s, ZKR + b"H", kind="H")
    add("ready", "taking work, up to 1000 requests at once", s2c, ZKR + b"W" + u32(1000), kind="W", capacity=1000)
    add("goodbye", "taking no new work", s2c, ZKR + b"G", kind="G")
    add("ack", "goodbye acknowledged", c2s, ZKR + b"A", kind="A")
    for name, description, kind, attempt, codec, meaning in [
        ("request", "a bytes request, first attempt", "Q", 1, 0, b"payload"),
        ("request-resend", "the third attempt of a str request", "Q", 3, 1, "ping"),
        ("request-json", "a JSON request", "Q", 1, 4, {"a": 1}),
        ("reply", "a bytes reply", "R", 1, 0, b"pong"),
        ("reply-int", "an int reply to attempt 2", "R", 2, 2, 42),
        ("reply-float", "a float reply", "R", 1, 3, 0.1),
    ]:
        payload, shown = value(codec, meaning)
        add(
            name,
            description,
            c2s if kind == "Q" else s2c,
            msg(kind, attempt, codec, rid, payload),
            kind=kind,
            attempt=attempt,
            request_id=rid.hex(),
            value=shown,
        )
    add(
        "request-short-id",
        "a 2-byte request id (docs/wire.md's example)",
        c2s,
        msg("Q", 1, 0, b"id", b"payload"),
        kind="Q",
        attempt=1,
        request_id=b"id".hex(),
        value=value(0, b"payload")[1],
    )
    for name, description, attempt, request_id, error in [
        ("error", "the handler raised ValueError", 1, rid, ("ValueError", "bad", "Traceback...")),
        ("error-no-traceback", "an empty traceback", 1, rid, ("KeyError", "'k'", "")),
        ("error-no-id", "the answer to a request whose id could not be read", 0, b"", ("ProtocolError", "x", "")),
    ]:
        kind_, text, tb = (e.encode() for e in error)
        payload = u32(len(kind_)) + kind_ + u32(len(text)) + text + tb
        add(
            name,
            description,
            s2c,
            msg("E", attempt, 0, request_id, payload),
            kind="E",
            attempt=attempt,
            request_id=request_id.hex(),
            error={"type": error[0], "message": error[1], "traceback": error[2]},
        )
    for reason in ("leaving", "busy"):
        add(
            f"reject-{reason}",
            f"refused: {reason}",
            s2c,
            msg("N", 1, 0, rid, reason.encode()),
            kind="N",
            attempt=1,
            request_id=rid.hex(),
            reason=reason,
        )
    rpc = []
    for codec, call in [(4, ["resize", ["img.png", 64], {"keep": True}]), (5, ["add", [1, 2], {}])]:
        payload, shown = value(codec, call)
        rpc.append(
            {
                "name": f"rpc-{'json' if codec == 4 else 'msgpack'}",
                "description": "[method, args, kwargs]",
                "frames": [msg("Q", 1, codec, rid, payload).hex()],
                "method": call[0],
                "args": call[1],
                "kwargs": call[2],
                "request_id": rid.hex(),
                "value": shown,
            }
        )
    return {"capability": "reqrep", "spec": "wire.md#request-reply", "messages": messages, "rpc": rpc}


def dumps(obj: Any, indent: str = "") -> str:
    """JSON with what fits in 120 columns on one line (one ring key per line), the rest expanded."""
    flat = json.dumps(obj, ensure_ascii=False)
    if len(flat) + len(indent) <= 120 or not isinstance(obj, (dict, list)) or not obj:
        return flat
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in [
        ("codecs", codecs),
        ("pipeline", pipeline),
        ("cache", cache),
        ("ring", ring),
        ("reqrep", reqrep),
    ]:
        text = dumps(make()) + "\n"
        (OUT / f"{name}.json").write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}.json ({len(text)} bytes)")


if __name__ == "__main__":
    main()
