"""The request-reply protocol without sockets: server choice, timeouts, retries, late replies, goodbye, window."""

from __future__ import annotations

import pytest

from zmqkit import ConfigurationError, RemoteError, RequestTimeout, Unavailable
from zmqkit.patterns.reqrep.protocol import (
    ACK,
    ERROR,
    GOODBYE,
    HEADER,
    HELLO,
    READY,
    REJECT,
    REPLY,
    REQUEST,
    ClientProtocol,
    ServerProtocol,
    error_payload,
    message,
    parse_error,
    parse_message,
)
from zmqkit.wire import pack_u32

A, B = b"tcp://a:1", b"tcp://b:1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready(proto: ClientProtocol, alias: bytes, capacity: int = 10) -> None:
    proto.on_message(alias, HEADER + bytes([READY]) + pack_u32(capacity))


def sent(proto: ClientProtocol) -> list[tuple[bytes, int, int, bytes]]:
    """Requests in the outbox as (server, kind, attempt, request id); clears it."""
    out = []
    for alias, msg in proto.outbox:
        kind, attempt, _, rid, _ = parse_message(msg) if len(msg) > 5 else (msg[4], 0, 0, b"", b"")
        out.append((alias, kind, attempt, rid))
    proto.outbox.clear()
    return out


def answer(proto: ClientProtocol, alias: bytes, attempt: int, rid: bytes, body: bytes = b"ok") -> None:
    proto.on_message(alias, message(REPLY, attempt, 0, rid, body))


def make(clock: Clock, **kw: object) -> ClientProtocol:
    proto = ClientProtocol({A: A.decode(), B: B.decode()}, clock=clock, **kw)  # type: ignore[arg-type]
    proto.tick()
    assert {s[1] for s in sent(proto)} == {HELLO}
    return proto


def test_requests_wait_for_a_ready_server_then_go_to_the_least_loaded() -> None:
    clock = Clock()
    proto = make(clock, attempt_timeout=1.0)
    rid = proto.submit(0, b"x", timeout=5.0)
    assert sent(proto) == []  # nobody is ready yet
    ready(proto, A)
    assert sent(proto) == [(A, REQUEST, 1, rid)]
    ready(proto, B)
    rid2 = proto.submit(0, b"y", timeout=5.0)
    assert sent(proto) == [(B, REQUEST, 1, rid2)]  # A holds one already
    answer(proto, A, 1, rid)
    assert proto.completed == [(rid, (True, b"ok"))]


def test_timeout_retries_on_another_server_and_ignores_the_late_reply() -> None:
    clock = Clock()
    proto = make(clock, attempt_timeout=1.0, retries=2, backoff=0.1)
    ready(proto, A)
    ready(proto, B)
    rid = proto.submit(0, b"x", timeout=10.0)
    first = sent(proto)[0][0]
    other = B if first == A else A
    clock.now += 1.0
    proto.tick()
    assert sent(proto) == [] and proto.servers_state()[first] == "suspect"
    clock.now += 0.1  # the backoff
    proto.tick()
    assert [r for r in sent(proto) if r[1] == REQUEST] == [(other, REQUEST, 2, rid)]
    answer(proto, first, 1, rid, b"late")
    assert proto.completed == [] and proto.late_replies == 1
    answer(proto, other, 2, rid, b"fresh")
    assert proto.completed == [(rid, (True, b"fresh"))]


def test_retries_run_out_as_request_timeout() -> None:
    clock = Clock()
    proto = make(clock, attempt_timeout=1.0, retries=1, backoff=0.0)
    ready(proto, A)
    proto.submit(0, b"x", timeout=10.0)
    for _ in range(3):
        clock.now += 1.0
        proto.tick()
        proto.on_message(A, HEADER + bytes([READY]) + pack_u32(10))  # it answers probes, not requests
    [(_, (ok, exc))] = proto.completed
    assert not ok and isinstance(exc, RequestTimeout) and "2 attempt(s)" in str(exc)


def test_no_server_ever_ready_is_unavailable() -> None:
    clock = Clock()
    proto = make(clock)
    proto.submit(0, b"x", timeout=2.0)
    clock.now += 2.0
    proto.tick()
    [(_, (ok, exc))] = proto.completed
    assert not ok and isinstance(exc, Unavailable) and "tcp://a:1 (connecting)" in str(exc)


def test_goodbye_stops_new_work_but_replies_in_hand_still_count() -> None:
    clock = Clock()
    proto = make(clock)
    ready(proto, A)
    ready(proto, B)
    rid = proto.submit(0, b"x", timeout=5.0)
    holder = sent(proto)[0][0]
    other = B if holder == A else A
    proto.on_message(holder, HEADER + bytes([GOODBYE]))
    assert sent(proto) == [(holder, ACK, 0, b"")]
    for _ in range(3):
        r = proto.submit(0, b"y", timeout=5.0)
        assert sent(proto) == [(other, REQUEST, 1, r)]
    answer(proto, holder, 1, rid)
    assert (rid, (True, b"ok")) in proto.completed


def test_reject_goes_elsewhere_at_once_without_using_a_retry() -> None:
    clock = Clock()
    proto = make(clock, retries=0)
    ready(proto, A)
    ready(proto, B)
    rid = proto.submit(0, b"x", timeout=5.0)
    first = sent(proto)[0][0]
    proto.on_message(first, message(REJECT, 1, 0, rid, b"leaving"))
    [(to, kind, attempt, again)] = sent(proto)
    assert to != first and (kind, attempt, again) == (REQUEST, 2, rid)


def test_unreachable_server_hands_its_requests_to_another_at_once() -> None:
    clock = Clock()
    proto = make(clock)
    ready(proto, A)
    ready(proto, B)
    rids = [proto.submit(0, b"%d" % i, timeout=5.0) for i in range(4)]
    out = list(proto.outbox)
    sent(proto)
    on_a = [f for f in out if f[0] == A]
    proto.undeliverable(*on_a[-1])
    resent = sent(proto)
    assert {r[0] for r in resent} == {B} and len(resent) == len(on_a)
    assert proto.servers_state()[A] == "down"
    assert len(proto.pending) == len(rids)


def test_a_reply_finishes_the_request_and_leaves_no_timer_that_matters() -> None:
    clock = Clock()
    proto = make(clock, retries=1)
    ready(proto, A)
    ready(proto, B)
    clock.now += 1.0
    proto.tick()  # nothing left to probe
    rid = proto.submit(0, b"x", timeout=4.0)
    [(to, *_)] = sent(proto)
    assert proto.next_deadline() == 103.0  # the first of two attempts: half the timeout
    proto.on_message(to, message(REPLY, 1, 1, rid, b"caf\xc3\xa9"))
    assert proto.completed == [(rid, (True, "café"))]
    assert proto.pending == {} and proto.peers[to].in_flight == 0
    assert proto.next_deadline() == float("inf")  # the finished request's timer does not wake anyone


def test_a_request_with_no_limit_is_never_timed_out() -> None:
    clock = Clock()
    proto = make(clock, retries=1)
    ready(proto, A)
    ready(proto, B)
    clock.now += 1.0
    proto.tick()
    rid = proto.submit(0, b"x", timeout=None)
    [(to, *_)] = sent(proto)
    clock.now += 1e9
    proto.tick()
    assert proto.completed == [] and rid in proto.pending
    answer(proto, to, 1, rid)
    assert proto.completed == [(rid, (True, b"ok"))]


def test_per_server_bound_queues_the_rest() -> None:
    clock = Clock()
    proto = make(clock, max_in_flight=2)
    ready(proto, A)
    rids = [proto.submit(0, b"x", timeout=5.0) for _ in range(3)]
    assert [r[3] for r in sent(proto)] == rids[:2]
    answer(proto, A, 1, rids[0])
    assert [r[3] for r in sent(proto)] == [rids[2]]


def test_remote_error_and_malformed_replies() -> None:
    clock = Clock()
    proto = make(clock)
    ready(proto, A)
    rid = proto.submit(0, b"x", timeout=5.0)
    proto.on_message(A, HEADER + b"\x00")  # unknown kind: logged and dropped
    proto.on_message(A, b"XXX\x03R")
    proto.on_message(A, b"ZKR\x02R")  # an older version
    proto.on_message(A, b"")
    assert proto.completed == []
    proto.on_message(A, message(ERROR, 1, 0, rid, error_payload("ValueError", "bad size", "Traceback...")))
    [(_, (_ok, exc))] = proto.completed
    assert isinstance(exc, RemoteError) and (exc.remote_type, exc.message) == ("ValueError", "bad size")
    assert exc.remote_traceback == "Traceback..."


def test_error_payload_layout_and_unreadable_ones() -> None:
    assert error_payload("KeyError", "no", "tb") == b"\x00\x00\x00\x08KeyError\x00\x00\x00\x02notb"
    assert (parse_error(b"\x00\x00\x00\x01E\x00\x00\x00\x00").remote_type, parse_error(b"").remote_type) == (
        "E",
        "ProtocolError",
    )
    assert "unreadable" in parse_error(b"\x00\x00\x00\x09short").message


def test_bad_arguments_raise_at_once() -> None:
    with pytest.raises(ConfigurationError, match="retries=-1"):
        ClientProtocol({A: "a"}, retries=-1)
    with pytest.raises(ConfigurationError, match="max_in_flight=0"):
        ClientProtocol({A: "a"}, max_in_flight=0)
    with pytest.raises(ConfigurationError, match="window=-3"):
        ServerProtocol(window=-3)


def request(rid: bytes, attempt: int = 1, body: bytes = b"x", who: bytes = b"c1") -> list[bytes]:
    return [who, message(REQUEST, attempt, 0, rid, body)]


def test_server_window_answers_a_retry_without_running_it_again() -> None:
    proto = ServerProtocol(window=100)
    job = proto.on_message(request(b"r1"))
    assert job is not None and proto.held == 1
    assert proto.on_message(request(b"r1", attempt=2)) is None  # still running: answer attempt 2 when done
    proto.finish(job, REPLY, 0, b"done")
    [reply] = proto.outbox
    assert reply[0] == b"c1" and parse_message(reply[1])[:2] == (REPLY, 2)
    proto.outbox.clear()
    assert proto.on_message(request(b"r1", attempt=3)) is None
    [again] = proto.outbox
    assert parse_message(again[1]) == (REPLY, 3, 0, b"r1", b"done")
    assert proto.executed == 1 and proto.duplicates == 2
    # Another client's request with the same id is its own request.
    assert proto.on_message(request(b"r1", who=b"c2")) is not None


def test_server_window_remembers_at_least_its_size() -> None:
    proto = ServerProtocol(window=3)

    def run(rid: bytes, attempt: int = 1) -> bool:
        job = proto.on_message(request(rid, attempt))
        if job is not None:
            proto.finish(job, REPLY, 0, b"done")
        proto.outbox.clear()
        return job is not None

    assert all(run(b"r%d" % i) for i in range(5))
    # r2, r3, r4 are the last three: each is answered from the window, not run again.
    assert not any(run(b"r%d" % i, attempt=2) for i in (2, 3, 4))
    assert all(run(b"s%d" % i) for i in range(6))
    assert run(b"r4", attempt=3)  # six newer requests later it is forgotten (at most twice the window is kept)


def test_server_window_keeps_a_running_job_when_others_finish() -> None:
    # Handler threads: a finish is not an arrival. c is among the last three arrivals (c, d, e) and still runs
    # when its retry comes: it must be found, however the finishes of others interleave with arrivals.
    proto = ServerProtocol(window=3)
    jobs = {rid: proto.on_message(request(rid)) for rid in (b"a", b"b", b"c", b"d")}
    job_a = jobs[b"a"]
    assert job_a is not None
    proto.finish(job_a, REPLY, 0, b"done")
    assert proto.on_message(request(b"e")) is not None
    assert proto.on_message(request(b"c", attempt=2)) is None  # still running: not run a second time
    assert proto.duplicates == 1 and proto.held == 4


def test_server_without_window_runs_duplicates() -> None:
    proto = ServerProtocol(window=0)
    assert proto.on_message(request(b"r1")) is not None
    assert proto.on_message(request(b"r1", attempt=2)) is not None


def test_server_busy_and_leaving_reject() -> None:
    proto = ServerProtocol(max_queue=1)
    proto.on_message([b"c1", HEADER + bytes([HELLO])])
    assert proto.outbox.pop() == [b"c1", HEADER + bytes([READY]) + pack_u32(1)]
    job = proto.on_message(request(b"r1"))
    assert proto.on_message(request(b"r2")) is None
    assert parse_message(proto.outbox.pop()[1]) == (REJECT, 1, 0, b"r2", b"busy")
    proto.leave()
    assert proto.outbox.pop() == [b"c1", HEADER + bytes([GOODBYE])]
    assert proto.on_message(request(b"r3")) is None
    assert parse_message(proto.outbox.pop()[1])[4] == b"leaving"
    assert job is not None
    proto.finish(job, REPLY, 0, b"ok")
    assert not proto.drained  # c1 has not promised to stop sending yet
    proto.on_message([b"c1", HEADER + bytes([ACK])])
    assert proto.drained


def test_server_answers_along_any_envelope() -> None:
    # A REQ peer's empty delimiter and a proxy's extra hop are envelope frames like any other: echoed whole.
    proto = ServerProtocol()
    for envelope in ([b"c1", b""], [b"proxy", b"c1"], [b"proxy", b"c1", b""]):
        job = proto.on_message([*envelope, message(REQUEST, 1, 0, b"r-%d" % len(envelope), b"x")])
        assert job is not None and job.envelope == envelope
        proto.finish(job, REPLY, 0, b"ok")
        [reply] = proto.outbox
        assert reply[:-1] == envelope and parse_message(reply[-1])[0] == REPLY
        proto.outbox.clear()


@pytest.mark.parametrize(
    "frames",
    [
        [b"c1", b"XYZ\x03Q"],
        [b"c1", HEADER[:-1] + b"\x09Q"],
        [b"c1", b"ZKR\x02Q\x01\x00\x01r"],  # version 2
        [b"c1", b"", b"ZKR\x02Q\x01\x00\x01r"],  # version 2, with its empty delimiter
        [b"c1", HEADER],
        [b"c1", HEADER + b"Q\x01\x00\x40" + b"x" * 10],
        [b"c1", message(REQUEST, 1, 0, b"")],
        [b"c1", HEADER + b"Z"],
    ],
)
def test_server_answers_malformed_requests_with_an_error(frames: list[bytes]) -> None:
    proto = ServerProtocol()
    assert proto.on_message(frames) is None
    [reply] = proto.outbox
    assert reply[:-1] == frames[:-1] and reply[-1][:5] == HEADER + bytes([ERROR])
    assert parse_error(parse_message(reply[-1])[4]).remote_type == "ProtocolError"


def test_server_drops_messages_without_envelope_or_with_too_many_hops() -> None:
    proto = ServerProtocol()
    assert proto.on_message([HEADER + bytes([HELLO])]) is None
    assert proto.on_message([b"hop"] * 33 + [HEADER + bytes([HELLO])]) is None
    assert proto.outbox == []


# ---------------------------------------------------------------- membership (a server set that changes)
def both_ready(clock: Clock) -> ClientProtocol:
    proto = make(clock)
    ready(proto, A)
    ready(proto, B)
    return proto


def test_a_dynamic_client_starts_empty_and_a_waiting_request_goes_to_the_first_server() -> None:
    clock = Clock()
    proto = ClientProtocol({}, dynamic=True, clock=clock)
    rid = proto.submit(0, b"x", timeout=5)
    assert proto.outbox == [] and list(proto.waiting) == [rid]
    proto.add_peer(A, A.decode())
    proto.tick()
    assert sent(proto) == [(A, HELLO, 0, b"")]
    ready(proto, A)
    assert sent(proto) == [(A, REQUEST, 1, rid)]
    with pytest.raises(ConfigurationError):
        ClientProtocol({}, clock=clock)  # a static list must name a server


def test_a_draining_server_gets_nothing_new_but_its_requests_finish() -> None:
    clock = Clock()
    proto = both_ready(clock)
    held = proto.submit(0, b"x", timeout=5)
    (alias, _, attempt, _), *_ = sent(proto)
    proto.drain_peer(alias)
    ready(proto, alias)  # a READY (to a probe) does not make it choosable: only membership does
    others = [proto.submit(0, b"y", timeout=5) for _ in range(5)]
    assert {s[0] for s in sent(proto)} == ({A, B} - {alias})
    answer(proto, alias, attempt, held)
    assert (held, (True, b"ok")) in proto.completed
    clock.now += 10
    proto.tick()
    assert all(s[1] != HELLO or s[0] != alias for s in sent(proto))  # not probed either
    proto.add_peer(alias, alias.decode())  # up again
    proto.tick()
    assert (alias, HELLO, 0, b"") in sent(proto)
    assert others


def test_a_removed_server_s_requests_go_to_the_others_at_once() -> None:
    clock = Clock()
    proto = both_ready(clock)
    rids = [proto.submit(0, b"x", timeout=5) for _ in range(4)]
    on_a = {s[3] for s in sent(proto) if s[0] == A}
    assert on_a
    proto.remove_peer(A)
    moved = sent(proto)
    assert {s[0] for s in moved} == {B} and {s[3] for s in moved} == on_a
    assert A not in proto.servers_state()
    for alias, _, attempt, rid in moved:
        answer(proto, alias, attempt, rid)
    assert len(proto.completed) == len(on_a) and set(rids) >= on_a


def test_requests_wait_when_the_last_server_is_removed_and_time_out_saying_so() -> None:
    clock = Clock()
    proto = ClientProtocol({A: A.decode()}, dynamic=True, clock=clock)
    proto.tick()
    ready(proto, A)
    sent(proto)
    rid = proto.submit(0, b"x", timeout=1)
    proto.remove_peer(A)
    assert sent(proto) == [] and list(proto.waiting) == [rid]
    clock.now += 2
    proto.tick()
    [(done, (ok, error))] = proto.completed
    assert done == rid and not ok and isinstance(error, RequestTimeout) and "tcp://a:1" in str(error)
