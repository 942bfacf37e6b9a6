"""Pipeline over real sockets: acks, results, retries, dead letters, flow control, interop, graceful stop."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from zmqkit import ConfigurationError, Curve, KeyPair, RequestTimeout, Unavailable
from zmqkit.patterns import Backoff, Producer, Retry, Sink, Worker
from zmqkit.patterns.pipeline.protocol import HDR
from zmqkit.patterns.pipeline.spool import Spool
from zmqkit.testing import wait_until
from zmqkit.wire import pack_u32

PROCS = Path(__file__).with_name("pipeline_procs.py")
FAST = Backoff(base=0.01, factor=2, maximum=0.05, jitter=0.5)


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, "the producer's stats to reach the expected state")


@pytest.mark.timeout(30)
def test_acked_messages_and_results() -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer, Worker(lambda v: v * 2, connect=producer.endpoint) as w:
        w.start()
        ids = [producer.send(i) for i in range(500)]
        producer.join(timeout=20)
        results = {r.id: r.value for r in producer.results(timeout=0.5)}
        assert results == {msg_id: 2 * i for i, msg_id in enumerate(ids)}
        stats = producer.stats()
        assert stats["acked"] == 500 and stats["in_flight"] == 0 and stats["duplicates"] == 0


@pytest.mark.timeout(30)
def test_handler_errors_retry_then_dead_letter_and_resubmit() -> None:
    attempts: dict[str, int] = {}
    healed = threading.Event()

    def handler(value: str) -> str:
        attempts[value] = attempts.get(value, 0) + 1
        if value == "flaky" and attempts[value] < 3:
            raise ConnectionError("try later")
        if value == "later" and attempts[value] == 1:
            raise Retry(delay=0.05)
        if value == "bad" and not healed.is_set():
            raise ValueError("no such mailbox")
        return value.upper()

    with (
        Producer(bind="tcp://127.0.0.1:0", max_attempts=4, backoff=FAST) as producer,
        Worker(handler, connect=producer.endpoint) as worker,
    ):
        worker.start()
        for v in ("flaky", "later", "bad", "fine"):
            producer.send(v)
        producer.join(timeout=20)
        assert {r.value for r in producer.results(timeout=0.2)} == {"FLAKY", "LATER", "FINE"}
        (letter,) = producer.dead_letters()
        assert letter.value == "bad" and letter.attempts == 4 and "no such mailbox" in letter.error
        assert attempts == {"flaky": 3, "later": 2, "bad": 4, "fine": 1}
        healed.set()
        producer.resubmit(letter.id)
        producer.join(timeout=10)
        assert producer.dead_letters() == [] and worker.failed == 2 + 1 + 4
        assert producer.stats()["dead"] == 1 and producer.stats()["retried"] == 2 + 1 + 3


@pytest.mark.timeout(30)
def test_fire_and_forget_from_zmqkit_and_from_raw_pyzmq(raw_socket) -> None:  # type: ignore[no-untyped-def]
    got: list[object] = []
    done = threading.Event()

    def handler(value: object) -> None:
        if value == "boom":
            raise RuntimeError("handler bug")  # logged; the worker carries on
        got.append(value)
        if len(got) == 6:
            done.set()

    with Worker(handler, bind="tcp://127.0.0.1:0", acks=False) as worker:
        worker.start()
        raw = raw_socket(zmq.PUSH)
        raw.connect(worker.endpoint)
        raw.send(b"ZKP\x01")  # header without a codec byte: malformed, dropped
        raw.send(b"ZKP\x01\x63junk")  # unknown codec 99: dropped
        raw.send(b"ZKP\x01\x06pickled?")  # pickle the worker did not opt into: dropped
        for i in range(3):
            raw.send(b"raw-%d" % i)
        with Producer(connect=worker.endpoint, acks=False) as producer:
            producer.send("boom")
            producer.send({"json": 1})
            producer.send("text")
            producer.send(b"bytes")
            assert producer.stats() == {"auth_failures": 0}  # no acks: nothing else to count
        assert done.wait(10)
        assert worker.failed == 1
    assert sorted(map(repr, got)) == sorted(map(repr, [b"raw-0", b"raw-1", b"raw-2", {"json": 1}, "text", b"bytes"]))


@pytest.mark.timeout(30)
def test_a_plain_pyzmq_worker_speaks_the_acked_protocol(raw_socket) -> None:  # type: ignore[no-untyped-def]
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        dealer = raw_socket(zmq.DEALER)
        dealer.connect(producer.endpoint)
        dealer.send_multipart([b"", b"ZKP\x01", b"READY", struct.pack(">I", 10)])
        producer.send(b"hello")
        producer.send("two")
        frames = dealer.recv_multipart()
        assert frames[:3] == [b"", b"ZKP\x01", b"TASK"] and len(frames) == 4
        heads, payloads, blob, pos = [], [], frames[3], 0
        while pos < len(blob):
            heads.append(struct.unpack_from(">QIBI", blob, pos))
            payloads.append(blob[pos + 17 : pos + 17 + heads[-1][3]])
            pos += 17 + heads[-1][3]
        assert [(h[1], h[2]) for h in heads] == [(1, 0), (1, 1)] and payloads == [b"hello", b"two"]
        # Ack the first, return a JSON result for the second.
        dealer.send_multipart(
            [b"", b"ZKP\x01", b"DONE", struct.pack(">Q", heads[0][0]), struct.pack(">QB", heads[1][0], 4), b'{"n":2}']
        )
        producer.join(timeout=10)
        assert [r.value for r in producer.results(timeout=0.2)] == [{"n": 2}]


@pytest.mark.timeout(30)
def test_malformed_frames_are_logged_and_dropped(raw_socket, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    with Producer(bind="tcp://127.0.0.1:0") as producer, Worker(str.upper, connect=producer.endpoint) as w:
        w.start()
        bad = raw_socket(zmq.DEALER)
        bad.connect(producer.endpoint)
        for frames in ([b"junk"], [b"", b"ZKP\x09", b"READY"], [b"", HDR, b"DONE", b"123"], [b"", HDR, b"WHAT"]):
            bad.send_multipart(frames)
        wait_for(lambda: producer.stats()["malformed"] >= 3)
        producer.send("still works")
        producer.join(timeout=10)
        assert [r.value for r in producer.results(timeout=0.2)] == ["STILL WORKS"]
    assert "malformed" in caplog.text


@pytest.mark.timeout(30)
def test_flow_control_bounds_messages_per_worker() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def slow(value: int) -> None:
        gate.wait(10)
        seen.append(value)

    with Producer(bind="tcp://127.0.0.1:0") as producer, Worker(slow, connect=producer.endpoint, credit=3) as w:
        w.start()
        for i in range(50):
            producer.send(i)
        wait_for(lambda: producer.stats()["delivered"] == 3)
        stats = producer.stats()
        assert stats["queued"] == 47  # the rest waits at the producer, not in the slow worker
        gate.set()
        producer.join(timeout=20)
        assert sorted(seen) == list(range(50))


@pytest.mark.timeout(30)
def test_a_slow_worker_with_the_default_credit_holds_no_more_than_100() -> None:
    gate = threading.Event()
    with (
        Producer(bind="tcp://127.0.0.1:0") as producer,
        Worker(lambda v: gate.wait(10), connect=producer.endpoint) as w,
    ):
        w.start()
        producer.send_many(range(500))
        wait_for(lambda: producer.stats()["delivered"] == 100)
        # Busy on its first message, it never ran dry: its credit stays at 100 (1000 is only for keeping up).
        assert producer.stats()["queued"] == 400
        gate.set()
        producer.join(timeout=20)
        assert producer.stats()["acked"] == 500


@pytest.mark.timeout(30)
def test_send_backpressure_blocks_or_raises() -> None:
    with Producer(bind="tcp://127.0.0.1:0", max_queued=2) as producer:
        producer.send(1)
        producer.send(2)
        with pytest.raises(RequestTimeout):
            producer.send(3, timeout=0.05)
    with Producer(bind="tcp://127.0.0.1:0", max_queued=1, on_full="raise") as producer:
        producer.send(1)
        with pytest.raises(Unavailable, match="queue full"):
            producer.send(2)
    with Producer(bind="tcp://127.0.0.1:0", acks=False, on_full="raise") as producer, pytest.raises(Unavailable):
        producer.send(b"nobody listens")  # IMMEDIATE: no connected worker, nothing queued blindly


@pytest.mark.timeout(30)
def test_results_fan_in_to_a_sink_from_many_workers() -> None:
    with Sink(bind="tcp://127.0.0.1:0") as sink, Producer(bind="tcp://127.0.0.1:0") as producer:
        workers = [
            Worker(lambda v, n=n: (n, v), connect=producer.endpoint, sink=sink.endpoint, credit=5).start()
            for n in range(3)
        ]
        try:
            wait_for(lambda: producer.stats()["workers"] == 3)
            for i in range(60):
                producer.send(i)
            producer.join(timeout=20)
            results = []
            for r in sink.results(timeout=5):
                results.append(r)
                if len(results) == 60:
                    break
            assert sorted(r.value[1] for r in results) == list(range(60))
            assert len({r.value[0] for r in results}) >= 2  # spread over workers
            assert list(producer.results(timeout=0)) == []  # results went to the sink
        finally:
            for w in workers:
                w.close()


@pytest.mark.timeout(30)
def test_concurrency_runs_handlers_in_parallel() -> None:
    barrier = threading.Barrier(4, timeout=10)
    with (
        Producer(bind="tcp://127.0.0.1:0") as producer,
        Worker(lambda v: barrier.wait(), connect=producer.endpoint, concurrency=4, credit=1) as worker,
    ):
        worker.start()
        for i in range(8):
            producer.send(i)
        producer.join(timeout=20)
        # 4 handlers meet at the barrier, only possible if they run at once; else it breaks and they fail.
        assert worker.failed == 0 and worker.processed == 8 and producer.stats()["dead"] == 0


@pytest.mark.timeout(30)
def test_graceful_stop_finishes_and_acks_what_is_in_hand() -> None:
    started = threading.Event()

    def handler(value: int) -> int:
        started.set()
        threading.Event().wait(0.2)  # a task in progress when stop() comes
        return value

    with Producer(bind="tcp://127.0.0.1:0") as producer:
        worker = Worker(handler, connect=producer.endpoint, credit=3).start()
        for i in range(3):
            producer.send(i)
        assert started.wait(10)
        worker.stop(timeout=10)
        worker.close()
        producer.join(timeout=5)
        assert producer.stats()["acked"] == 3 and producer.stats()["redelivered"] == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("role", ["worker", "aworker"])
def test_sigterm_lets_a_worker_process_finish_its_task(role: str) -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        args = [producer.endpoint, "1"] if role == "worker" else [producer.endpoint]
        proc = subprocess.Popen([sys.executable, str(PROCS), role, *args], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            producer.send("slow")
            wait_for(lambda: producer.stats()["delivered"] == 1)
            proc.terminate()
            assert proc.wait(10) == 0
            producer.join(timeout=5)
            assert producer.stats()["acked"] == 1
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_poison_message_is_dead_lettered_after_repeated_worker_deaths() -> None:
    with Producer(bind="tcp://127.0.0.1:0", worker_timeout=1.0, max_attempts=3) as producer:
        producer.send("poison")
        deaths = 0
        while producer.stats()["dead"] == 0:
            assert deaths < 3, f"still not dead after {deaths} worker deaths: {producer.stats()}"
            proc = subprocess.Popen([sys.executable, str(PROCS), "worker", producer.endpoint, "1"])
            try:
                assert proc.wait(30) == 3
            finally:
                proc.kill()  # never leave a worker behind, even when the test fails
                proc.wait()
            deaths += 1
            wait_for(lambda n=deaths: producer.stats()["redelivered"] == n)  # the producer noticed
            assert deaths <= 3
        producer.send("fine")
        with Worker(lambda v: v, connect=producer.endpoint) as w:
            w.start()
            producer.join(timeout=10)
        (letter,) = producer.dead_letters()
        assert letter.value == "poison" and "WorkerLost" in letter.error and deaths == 3


@pytest.mark.timeout(20)
def test_join_times_out_and_close_reports_leftovers() -> None:
    producer = Producer(bind="tcp://127.0.0.1:0")
    producer.send("undelivered")
    with pytest.raises(RequestTimeout, match="1 message"):
        producer.join(timeout=0.05)
    assert producer.close() == [(1, "undelivered")]


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"bind": "tcp://127.0.0.1:0", "on_full": "drop"}, "'drop'"),
        ({"bind": "nowhere"}, "'nowhere'"),
        ({"bind": "tcp://127.0.0.1:0", "acks": False, "spool": "x.db"}, "'x.db'"),
        ({"bind": "tcp://127.0.0.1:0", "max_attempts": 0}, "0"),
        ({}, "bind="),
    ],
)
def test_bad_producer_arguments_raise_at_once(kwargs: dict[str, object], bad: str) -> None:
    with pytest.raises(ConfigurationError, match=bad):
        Producer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [({"concurrency": 0}, "0"), ({"credit": -1}, "-1"), ({"heartbeat": "1s"}, "'1s'"), ({"connect": "bad"}, "'bad'")],
)
def test_bad_worker_arguments_raise_at_once(kwargs: dict[str, object], bad: str) -> None:
    kwargs.setdefault("connect", "tcp://127.0.0.1:5")
    with pytest.raises(ConfigurationError, match=bad):
        Worker(print, **kwargs)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
def test_worker_started_before_the_producer_is_greeted(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/queue"  # ipc: see test_a_worker_outlives_its_producer_and_greets_the_next_one
    with Worker(lambda v: v + 1, connect=endpoint, heartbeat=0.1) as w:
        w.start()
        with Producer(bind=endpoint) as producer:
            producer.send(41)
            producer.join(timeout=10)
            assert [r.value for r in producer.results(timeout=0.2)] == [42]


def test_ready_frame_layout() -> None:
    assert pack_u32(100) == b"\x00\x00\x00d"


@pytest.mark.timeout(30)
def test_curve_encrypts_and_authenticates_the_pipeline() -> None:
    server, client = KeyPair.generate(), KeyPair.generate()
    server_curve, client_curve = Curve.server(server, allow=[client.public]), Curve.client(server.public, client)
    with (
        Producer(bind="tcp://127.0.0.1:0", curve=server_curve) as producer,
        Worker(str.upper, connect=producer.endpoint, curve=client_curve) as worker,
    ):
        worker.start()
        producer.send("secret")
        producer.join(timeout=10)
        assert [r.value for r in producer.results(timeout=0.2)] == ["SECRET"]


@pytest.mark.timeout(30)
def test_a_worker_serves_several_producers() -> None:
    with (
        Producer(bind="tcp://127.0.0.1:0") as p1,
        Producer(bind="tcp://127.0.0.1:0") as p2,
        Worker(lambda v: v, connect=[p1.endpoint, p2.endpoint]) as worker,
    ):
        worker.start()
        for i in range(20):
            p1.send(["p1", i])
            p2.send(["p2", i])
        p1.join(timeout=10)
        p2.join(timeout=10)
        assert sorted(r.value[1] for r in p1.results(timeout=0.2)) == list(range(20))
        assert {r.value[0] for r in p2.results(timeout=0.2)} == {"p2"}


@pytest.mark.timeout(30)
def test_producer_may_connect_to_a_worker_that_binds() -> None:
    with Worker(lambda v: v * 3, bind="tcp://127.0.0.1:0", heartbeat=0.1) as worker:
        worker.start()
        with Producer(connect=worker.endpoint) as producer:
            producer.send(14)
            producer.join(timeout=10)
            assert [r.value for r in producer.results(timeout=0.2)] == [42]


def test_spool_keeps_pending_and_dead_until_done(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    a, b, c = spool.add(0, b"a"), spool.add(4, b"[1]"), spool.add(1, b"c")
    spool.ack([a])
    spool.dead(b, 3, "ValueError: no")
    spool.retried(c, 2)
    assert list(spool.pending()) == [(c, 1, b"c", 2)]
    assert list(spool.dead_letters()) == [(b, 4, b"[1]", 3, "ValueError: no")]
    spool.revive(b)
    assert [row[0] for row in spool.pending()] == [b, c]
    spool.close()
    with pytest.raises(ConfigurationError, match="spool"):
        Spool(tmp_path / "missing-dir" / "s.db")


@pytest.mark.timeout(30)
def test_a_worker_outlives_its_producer_and_greets_the_next_one(tmp_path: Path) -> None:
    # ipc, not tcp: a TCP connect retried towards a free loopback port can land on that port itself.
    endpoint = f"ipc://{tmp_path}/queue"
    with Worker(lambda v: v, connect=endpoint, heartbeat=0.1) as worker:
        worker.start()
        for round_ in range(2):
            with Producer(bind=endpoint) as producer:
                producer.send(round_)
                producer.join(timeout=10)
                assert [r.value for r in producer.results(timeout=0.2)] == [round_]


@pytest.mark.timeout(30)
def test_send_many_keeps_order_and_applies_backpressure() -> None:
    with Producer(bind="tcp://127.0.0.1:0", max_queued=5) as producer:
        assert producer.send_many(["a", "b", "c"]) == [1, 2, 3]
        with pytest.raises(RequestTimeout):
            producer.send_many(list("defgh"), timeout=0.05)  # two fit, then the queue is full
        assert producer.stats()["queued"] == 5
        with Worker(lambda v: v, connect=producer.endpoint) as worker:
            worker.start()
            producer.join(timeout=10)
        assert [r.value for r in producer.results(timeout=0.2)] == list("abcde")
