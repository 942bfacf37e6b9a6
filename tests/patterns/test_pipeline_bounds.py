"""Pipeline limits: no pickle from a spool without opt-in, dead letters bounded in memory and read by pages."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import time
import tracemalloc
from pathlib import Path

import pytest

from zmqkit import ConfigurationError
from zmqkit.patterns import Producer, Worker
from zmqkit.patterns.pipeline.protocol import HDR, PICKLE_REFUSED, ProducerProtocol, Refused
from zmqkit.patterns.pipeline.spool import Spool
from zmqkit.testing import wait_until
from zmqkit.wire import pack_u32


class _Marker:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _pickled_spool(tmp_path: Path) -> tuple[Path, Path, int, int]:
    marker = tmp_path / "unpickled"
    spool = Spool(tmp_path / "s.db")
    pending = spool.add(6, pickle.dumps(_Marker(str(marker))))
    dead = spool.add(6, pickle.dumps(_Marker(str(marker))))
    spool.dead(dead, 5, "ValueError: boom")
    spool.close()
    return tmp_path / "s.db", marker, pending, dead


@pytest.mark.timeout(30)
def test_a_default_producer_never_unpickles_its_spool_and_reports_the_rows(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    path, marker, pending, dead = _pickled_spool(tmp_path)
    producer = Producer(bind="tcp://127.0.0.1:0", spool=str(path))
    (letter,) = producer.dead_letters()
    assert letter.id == dead and isinstance(letter.value, Refused) and PICKLE_REFUSED in letter.error
    assert letter.value.payload.startswith(b"\x80") and letter.value.codec == 6
    ((left_id, value),) = producer.close()
    assert left_id == pending and isinstance(value, Refused) and value.reason == PICKLE_REFUSED
    assert PICKLE_REFUSED in caplog.text
    assert not marker.exists()
    # Nothing lost: both rows are still in the spool.
    spool = Spool(path)
    assert [row[0] for row in spool.pending()] == [pending] and [row[0] for row in spool.dead_letters()] == [dead]
    spool.close()
    # A producer that opted in does decode them (and so runs the pickle: that is what opting in means).
    with Producer(bind="tcp://127.0.0.1:0", spool=str(path), allow_pickle=True) as trusting:
        trusting.dead_letters()
    assert marker.exists()


@pytest.mark.timeout(60)
def test_dead_letters_are_capped_counted_and_paged_over_real_sockets() -> None:
    def poison(value: int) -> None:
        raise ValueError(f"poison {value}")

    with (
        Producer(bind="tcp://127.0.0.1:0", max_attempts=1, max_dead_letters=50) as producer,
        Worker(poison, connect=producer.endpoint) as worker,
    ):
        worker.start()
        producer.send_many(range(120))
        producer.join(timeout=30)
        stats = producer.stats()
        assert stats["dead"] == 120 and stats["dead_dropped"] == 70
        first, second, rest = producer.dead_letters(0, 20), producer.dead_letters(20, 20), producer.dead_letters(40)
        kept = [d.value for d in first + second + rest]
        assert len(first) == len(second) == 20 and len(rest) == 10
        assert sorted(kept) == list(range(70, 120))  # the newest are kept
        producer.resubmit(rest[-1].id)
        producer.join(timeout=10)
        assert producer.stats()["dead"] == 121
        with pytest.raises(ConfigurationError, match="no dead letter"):
            producer.resubmit(10**9)
        with pytest.raises(ConfigurationError, match="limit"):
            producer.dead_letters(0, -1)


@pytest.mark.timeout(60)
def test_with_a_spool_dead_letters_stay_on_disk_and_page_from_there(tmp_path: Path) -> None:
    with (
        Producer(bind="tcp://127.0.0.1:0", max_attempts=1, spool=str(tmp_path / "s.db")) as producer,
        Worker(lambda v: 1 / 0, connect=producer.endpoint) as worker,
    ):
        worker.start()
        producer.send_many([f"m{i}" for i in range(30)])
        producer.join(timeout=30)
        assert producer.protocol is not None and not producer.protocol.dead  # nothing in memory
        assert [d.value for d in producer.dead_letters(25, 100)] == [f"m{i}" for i in range(25, 30)]
        assert producer.protocol.dead_count() == 30
        letter = producer.dead_letters(0, 1)[0]
        producer.resubmit(letter.id)
        wait_until(lambda: producer.stats()["dead"] == 31, 10, "the resubmitted message to die again")


def _kill(proto: ProducerProtocol, count: int) -> None:
    """Dead-letter ``count`` messages through the protocol (one worker that fails everything)."""
    proto.handle([b"w", b"", HDR, b"READY", pack_u32(1000)])
    body = os.urandom(600)
    for start in range(0, count, 1000):
        for _ in range(min(1000, count - start)):
            proto.accept(0, body)
        for frames in proto.dispatch():
            blob, pos = frames[4], 0
            while pos < len(blob):
                msg_id = int.from_bytes(blob[pos : pos + 8], "big")
                length = int.from_bytes(blob[pos + 13 : pos + 17], "big")
                pos += 17 + length
                proto.handle([b"w", b"", HDR, b"FAIL", msg_id.to_bytes(8, "big"), b"", b"ValueError", b"x" * 200])


@pytest.mark.timeout(120)
def test_100k_dead_letters_keep_the_producer_within_its_cap() -> None:
    proto = ProducerProtocol(max_attempts=1, max_dead_letters=10_000, clock=lambda: 0.0)
    _kill(proto, 2_000)  # warm up: interned strings, dict growth to the cap's size
    gc.collect()
    tracemalloc.start()
    try:
        _kill(proto, 20_000)
        gc.collect()
        capped, _ = tracemalloc.get_traced_memory()
        _kill(proto, 80_000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(proto.dead) == 10_000 and proto.stats()["dead_dropped"] == 92_000
    assert after - capped < 1_000_000, f"memory grew by {after - capped} bytes while the cap was full"


# -- a worker greets a producer that comes up after it at once, not at its next heartbeat ----------------------


@pytest.mark.timeout(30)
def test_a_worker_greets_a_late_producer_on_connect_not_at_its_next_heartbeat(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/queue"
    # A heartbeat far beyond the join timeout: only READY-on-connect can get the message through in time.
    with Worker(str.upper, connect=endpoint, heartbeat=60) as worker:
        worker.start()
        wait_until(lambda: worker.lanes[0].protos[0].greet, 10, "the worker's first READY to find no producer")
        with Producer(bind=endpoint) as producer:
            producer.send("hi")
            producer.join(timeout=10)
            assert [r.value for r in producer.results(timeout=0)] == ["HI"]
        assert not worker.lanes[0].protos[0].greet


@pytest.mark.timeout(30)
def test_an_asyncio_worker_greets_a_late_producer_on_connect(tmp_path: Path) -> None:
    import asyncio

    from zmqkit.asyncio import Worker as AsyncWorker

    endpoint = f"ipc://{tmp_path}/queue"

    async def main() -> None:
        async with AsyncWorker(str.upper, connect=endpoint, heartbeat=60) as worker:
            worker.start()
            proto = worker.lanes[0].protos[0]
            deadline = time.monotonic() + 10
            while not proto.greet:
                assert time.monotonic() < deadline, "the worker's first READY never failed"
                await asyncio.sleep(0.01)
            with Producer(bind=endpoint) as producer:
                producer.send("hi")
                await asyncio.to_thread(producer.join, 10)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_push_to_a_running_pull_is_served_as_soon_as_they_connect(tmp_path: Path) -> None:
    import subprocess
    import sys

    from click.testing import CliRunner

    from zmqkit.cli import main

    endpoint = f"ipc://{tmp_path}/queue"
    zmqkit = str(Path(sys.executable).parent / "zmqkit")
    pull = subprocess.Popen([zmqkit, "pull", endpoint, "--count", "1"], stdout=subprocess.PIPE, text=True)
    try:
        # That it completes (bounded) and the pull got it; the greeting itself is tested just above.
        result = CliRunner().invoke(main, ["push", endpoint, "hello", "--timeout", "5"])
        out, _ = pull.communicate(timeout=20)
    finally:
        pull.kill()
        pull.wait()
    assert result.exit_code == 0, result.output
    assert "acked 1, dead 0" in result.output and out.splitlines() == ["hello"]
