"""The pipeline protocol without sockets: retries, backoff, dead letters and redelivery on an injected clock."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqkit import ConfigurationError
from zmqkit.patterns import Backoff, Retry
from zmqkit.patterns.pipeline.protocol import (
    HDR,
    ProducerProtocol,
    Task,
    WorkerProtocol,
    decode_message,
    encode_message,
)
from zmqkit.patterns.pipeline.spool import Spool
from zmqkit.wire import pack_u32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ready(ident: bytes, credit: int) -> list[bytes]:
    return [ident, b"", HDR, b"READY", pack_u32(credit)]


def tasks_of(out: list[list[bytes]]) -> list[tuple[bytes, int, int]]:
    """(worker, id, attempt) of every task in ``out``."""
    found = []
    for frames in out:
        assert frames[3] == b"TASK" and len(frames) == 5
        blob, pos = frames[4], 0
        while pos < len(blob):
            msg_id, attempt, _, length = struct.unpack_from(">QIBI", blob, pos)
            pos += 17 + length
            found.append((frames[0], msg_id, attempt))
    return found


def worker_reply(worker: WorkerProtocol, frames: list[bytes], outcome: object) -> list[list[bytes]]:
    """Run the producer's TASK frames through a WorkerProtocol with ``outcome`` (a value or an exception)."""
    tasks, _ = worker.feed(frames[1:])
    for task in tasks:
        if isinstance(outcome, BaseException):
            worker.failed(task, outcome)
        else:
            worker.succeeded(task, outcome, _auto())
    return worker.flush()


def _auto():  # type: ignore[no-untyped-def]
    from zmqkit.codecs import get_codec

    return get_codec("auto")


def make(clock: Clock, **kw: object) -> ProducerProtocol:
    kw.setdefault("backoff", Backoff(base=1, factor=2, maximum=30, jitter=0.5))
    return ProducerProtocol(clock=clock, random=lambda: 0.5, **kw)  # type: ignore[arg-type]


def test_ack_finishes_and_returns_credit() -> None:
    clock = Clock()
    p = make(clock)
    w = WorkerProtocol(credit=2)
    p.handle([b"w1", *w.ready()])
    ids = [p.accept(0, b"a"), p.accept(0, b"b"), p.accept(0, b"c")]
    out = p.dispatch()
    assert [t[1] for t in tasks_of(out)] == ids[:2]  # credit 2: the third waits
    for reply in worker_reply(w, out[0], None):
        p.handle([b"w1", *reply])
    assert p.stats()["acked"] == 2
    assert [t[1] for t in tasks_of(p.dispatch())] == [ids[2]]


def test_results_come_back_decoded() -> None:
    p = make(Clock())
    w = WorkerProtocol(credit=5)
    p.handle([b"w1", *w.ready()])
    p.accept(1, b"x")
    (out,) = p.dispatch()
    for reply in worker_reply(w, out, {"ok": 1}):
        p.handle([b"w1", *reply])
    assert [(r.id, r.value) for r in p.results] == [(1, {"ok": 1})]
    assert p.idle()


def test_failure_backs_off_exponentially_then_dead_letters() -> None:
    clock = Clock()
    p = make(clock, max_attempts=3)
    w = WorkerProtocol(credit=1)
    p.handle([b"w1", *w.ready()])
    msg_id = p.accept(0, b"job")
    delays = []
    for attempt in (1, 2, 3):
        (out,) = p.dispatch()
        assert tasks_of([out]) == [(b"w1", msg_id, attempt)]
        for reply in worker_reply(w, out, ValueError("smtp down")):
            p.handle([b"w1", *reply])
        if attempt == 3:
            break
        assert p.dispatch() == []  # waiting for its backoff
        wait = p.next_timer()
        assert wait is not None
        delays.append(wait)
        clock.now += wait - 0.01
        p.tick()
        assert p.dispatch() == []  # not yet
        clock.now += 0.02
        p.tick()
    # base 1, factor 2, jitter 0.5 with random()=0.5: full delay * 0.75
    assert delays == pytest.approx([0.75, 1.5])
    assert p.idle()
    (letter,) = p.dead.values()
    assert letter.attempts == 3 and "ValueError: smtp down" in letter.error
    assert p.stats()["dead"] == 1 and p.stats()["retried"] == 2


def test_a_restarted_producer_keeps_counting_attempts_from_its_spool(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "work.db")
    first = make(clock, max_attempts=3, spool=spool)
    w = WorkerProtocol(credit=1)
    first.handle([b"w1", *w.ready()])
    msg_id = first.accept(0, b"job")
    for attempt in (1, 2):
        (out,) = first.dispatch()
        assert tasks_of([out]) == [(b"w1", msg_id, attempt)]
        for reply in worker_reply(w, out, Retry(delay=0)):
            first.handle([b"w1", *reply])
        first.tick()
    # The producer dies here; the next one on the same spool sends the third and last attempt.
    second = make(clock, max_attempts=3, spool=spool)
    w2 = WorkerProtocol(credit=1)
    second.handle([b"w2", *w2.ready()])
    (out,) = second.dispatch()
    assert tasks_of([out]) == [(b"w2", msg_id, 3)]
    for reply in worker_reply(w2, out, ValueError("still broken")):
        second.handle([b"w2", *reply])
    assert [row[3] for row in second.dead_page()] == [3] and not second.dead  # on disk, not in memory
    assert [row[3] for row in spool.dead_letters()] == [3]
    spool.close()


def test_retry_with_explicit_delay() -> None:
    clock = Clock()
    p = make(clock)
    w = WorkerProtocol(credit=1)
    p.handle([b"w1", *w.ready()])
    p.accept(0, b"job")
    (out,) = p.dispatch()
    for reply in worker_reply(w, out, Retry(delay=42)):
        p.handle([b"w1", *reply])
    clock.now += 41.9
    p.handle([b"w1", b"", HDR, b"HB"])
    p.tick()
    assert p.dispatch() == []
    clock.now += 0.2
    p.handle([b"w1", b"", HDR, b"HB"])
    p.tick()
    assert [t[2] for t in tasks_of(p.dispatch())] == [2]


def test_jitter_comes_from_the_injected_random() -> None:
    b = Backoff(base=2, factor=3, maximum=100, jitter=1.0)
    assert b.delay(1, lambda: 0.0) == 2
    assert b.delay(3, lambda: 0.25) == pytest.approx(18 * 0.75)
    assert b.delay(10, lambda: 0.0) == 100


def test_dead_letter_resubmit() -> None:
    p = make(Clock(), max_attempts=1)
    w = WorkerProtocol(credit=1)
    p.handle([b"w1", *w.ready()])
    msg_id = p.accept(0, b"job")
    (out,) = p.dispatch()
    for reply in worker_reply(w, out, RuntimeError("boom")):
        p.handle([b"w1", *reply])
    assert msg_id in p.dead
    p.resubmit(msg_id)
    assert tasks_of(p.dispatch()) == [(b"w1", msg_id, 1)]
    with pytest.raises(ConfigurationError, match="999"):
        p.resubmit(999)


def test_silent_worker_is_lost_and_its_messages_redelivered() -> None:
    clock = Clock()
    p = make(clock, worker_timeout=5)
    p.handle(ready(b"w1", 10))
    ids = [p.accept(0, b"%d" % i) for i in range(3)]
    assert {t[1] for t in tasks_of(p.dispatch())} == set(ids)
    p.handle(ready(b"w2", 10))
    clock.now += 4
    p.handle([b"w2", b"", HDR, b"HB"])
    p.tick()
    assert p.dispatch() == []  # w1 not yet overdue
    clock.now += 1.5
    p.tick()
    redone = tasks_of(p.dispatch())
    assert sorted(t[1] for t in redone) == ids and {t[0] for t in redone} == {b"w2"}
    assert p.stats()["redelivered"] == 3
    # The lost worker was only slow after all: its late ack finishes the message, w2's ack is a duplicate.
    p.handle([b"w1", b"", HDR, b"DONE", struct.pack(">Q", ids[0])])
    p.handle([b"w2", b"", HDR, b"DONE", struct.pack(">Q", ids[0])])
    assert p.stats()["duplicates"] == 1 and p.stats()["acked"] == 1


def test_heartbeats_keep_a_long_task_alive() -> None:
    clock = Clock()
    p = make(clock, worker_timeout=5)
    p.handle(ready(b"w1", 1))
    p.accept(0, b"long")
    p.dispatch()
    for _ in range(10):
        clock.now += 3
        p.handle([b"w1", b"", HDR, b"HB"])
        p.tick()
    assert p.stats()["redelivered"] == 0 and p.dispatch() == []


def test_poison_message_dead_after_repeated_worker_deaths() -> None:
    clock = Clock()
    p = make(clock, worker_timeout=1, max_attempts=3)
    msg_id = p.accept(0, b"poison")
    for n in range(3):
        ident = b"w%d" % n
        p.handle(ready(ident, 1))
        assert tasks_of(p.dispatch()) == [(ident, msg_id, n + 1)]
        clock.now += 2  # the worker died running it
        p.tick()
    assert p.idle() and "WorkerLost" in p.dead[msg_id].error


def test_unknown_worker_is_asked_to_introduce_itself() -> None:
    p = make(Clock())
    assert p.handle([b"w9", b"", HDR, b"HB"]) == [[b"w9", b"", HDR, b"HELLO"]]
    assert p.handle([b"w8", b"", HDR, b"BYE"]) == [[b"w8", b"", HDR, b"BYE"]]  # never introduced: still answered
    w = WorkerProtocol(credit=7)
    w.held = 3
    _, replies = w.feed([b"", HDR, b"HELLO"])
    assert replies == [[b"", HDR, b"READY", pack_u32(4)]]


def test_bye_stops_sending_to_that_worker() -> None:
    p = make(Clock())
    p.handle(ready(b"w1", 10))
    assert p.handle([b"w1", b"", HDR, b"BYE"]) == [[b"w1", b"", HDR, b"BYE"]]
    p.accept(0, b"x")
    assert p.dispatch() == []


def test_backpressure_flag() -> None:
    p = make(Clock(), max_queued=2)
    p.accept(0, b"a")
    assert not p.full()
    p.accept(0, b"b")
    assert p.full()


@pytest.mark.parametrize(
    "bad", [{"max_attempts": 0}, {"worker_timeout": -1}, {"max_queued": "x"}, {"batch": True}, {"backoff": 3}]
)
def test_bad_arguments_name_the_value(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        ProducerProtocol(**bad)  # type: ignore[arg-type]
    assert repr(next(iter(bad.values()))) in str(info.value)


def test_fire_and_forget_frames() -> None:
    assert encode_message(0, b"raw") == b"raw"
    assert decode_message(encode_message(4, b"[1]")) == (4, b"[1]")
    assert encode_message(0, b"ZKP\x01 looks like a header") == b"ZKP\x01\x00ZKP\x01 looks like a header"
    assert decode_message(encode_message(0, b"ZKP\x01x")) == (0, b"ZKP\x01x")


def test_worker_task_parsing() -> None:
    w = WorkerProtocol(credit=3)
    blob = struct.pack(">QIBI", 7, 2, 0, 1) + b"p" + struct.pack(">QIBI", 8, 1, 4, 2) + b"[]"
    tasks, _ = w.feed([b"", HDR, b"TASK", blob])
    assert tasks == [Task(7, 2, 0, b"p"), Task(8, 1, 4, b"[]")] and w.held == 2
    assert w.feed([b"", HDR, b"TASK", blob[:-1]]) == ([], [])  # truncated: dropped


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=8))
def test_malformed_frames_are_dropped_never_raised(frames: list[bytes]) -> None:
    logging.getLogger("zmqkit.patterns.pipeline.protocol").setLevel(logging.ERROR)
    p = make(Clock())
    p.handle([b"w", *frames])
    p.handle([b"w", b"", HDR, *frames])
    p.handle([b"w", b"", HDR, b"DONE", *frames])
    p.handle([b"w", b"", HDR, b"FAIL", *frames])
    w = WorkerProtocol(credit=1)
    w.feed(frames)
    w.feed([b"", HDR, b"TASK", *frames])


def test_a_repeated_ready_does_not_add_credit() -> None:
    p = make(Clock())
    p.handle(ready(b"w1", 2))
    for i in range(4):
        p.accept(0, b"%d" % i)
    assert len(tasks_of(p.dispatch())) == 2
    p.handle(ready(b"w1", 2))  # answered a second HELLO before our TASKs reached it
    assert p.dispatch() == []


def test_a_stopping_worker_repeats_bye_until_answered_or_unreachable() -> None:
    w = WorkerProtocol(credit=1)
    assert w.heartbeat() == [b"", HDR, b"HB"]
    w.bye()
    assert w.heartbeat() == [b"", HDR, b"BYE"]  # the first BYE may have been lost with a breaking pipe
    w.unreachable()
    assert w.closed and w.heartbeat() == [b"", HDR, b"HB"]


def run_dry(p: ProducerProtocol, w: WorkerProtocol, ident: bytes = b"w1") -> int:
    """Dispatch, have ``w`` finish every task, hand back its DONE; return how many tasks it got."""
    got = 0
    for frames in p.dispatch():
        got += len(tasks_of([frames]))
        for reply in worker_reply(w, frames, None):
            p.handle([ident, *reply])
    return got


@pytest.mark.timeout(10)
def test_a_worker_that_keeps_up_gets_more_credit_up_to_its_most() -> None:
    p = make(Clock(), batch=10_000)
    w = WorkerProtocol(credit=10, most=40)
    assert len(w.ready()) == 5  # READY credit most
    p.handle([b"w1", *w.ready()])
    for i in range(500):
        p.accept(0, b"%d" % i)
    # Each time it runs dry while work waits here, the producer doubles what it may hold, up to ``most``.
    assert [run_dry(p, w) for _ in range(4)] == [10, 20, 40, 40]
    assert w.held == 0 and p.stats()["acked"] == 110


@pytest.mark.timeout(10)
def test_a_grown_worker_that_turns_slow_is_back_to_its_announced_credit() -> None:
    clock = Clock()
    p = make(clock, batch=10_000)
    w = WorkerProtocol(credit=10, most=40)
    p.handle([b"w1", *w.ready()])
    for i in range(500):
        p.accept(0, b"%d" % i)
    run_dry(p, w)
    run_dry(p, w)
    assert len(tasks_of(p.dispatch())) == 40  # grown; now it holds 40 and finishes none
    clock.now += 0.2
    p.tick()
    assert p.peers[b"w1"].capacity == 40
    assert p.next_timer() == pytest.approx(0.05)  # when it will have been slow long enough
    clock.now += 0.1
    p.tick()
    assert p.peers[b"w1"].capacity == 10
    # Credit is now 10 less the 40 it holds: after 35 acks it has 5 back (half its capacity) and gets 5 more,
    # so it holds 10 at most from then on.
    p.handle([b"w1", b"", HDR, b"DONE", struct.pack(">34Q", *sorted(p.peers[b"w1"].held)[:34])])
    assert p.dispatch() == []
    p.handle([b"w1", b"", HDR, b"DONE", struct.pack(">Q", min(p.peers[b"w1"].held))])
    assert len(tasks_of(p.dispatch())) == 5
    assert len(p.peers[b"w1"].held) == 10


@pytest.mark.timeout(10)
def test_a_fixed_credit_never_grows() -> None:
    p = make(Clock(), batch=10_000)
    w = WorkerProtocol(credit=10)
    assert len(w.ready()) == 4  # no ``most``: the READY of a worker with a fixed credit, as before
    p.handle([b"w1", *w.ready()])
    for i in range(100):
        p.accept(0, b"%d" % i)
    assert [run_dry(p, w) for _ in range(3)] == [10, 10, 10]
