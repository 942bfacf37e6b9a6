"""The asyncio pipeline twins: same protocol, coroutines for I/O, async handlers with concurrency."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from zmqkit import RequestTimeout
from zmqkit.asyncio import Producer, Sink, Worker
from zmqkit.patterns import Backoff, Retry

FAST = Backoff(base=0.01, factor=2, maximum=0.05, jitter=0.5)


@pytest.mark.timeout(30)
async def test_async_handlers_run_concurrently_and_results_come_back() -> None:
    running = 0
    peak = 0

    async def handler(value: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)  # simulated I/O inside the handler
        running -= 1
        return value * 10

    async with (
        Producer(bind="tcp://127.0.0.1:0") as producer,
        Worker(handler, connect=producer.endpoint, concurrency=5) as worker,
    ):
        worker.start()
        ids = [await producer.send(i) for i in range(50)]
        await producer.join(timeout=20)
        results = {r.id: r.value async for r in producer.results(timeout=0.2)}
        assert results == {msg_id: 10 * i for i, msg_id in enumerate(ids)}
        assert peak > 1
        assert producer.stats()["acked"] == 50


@pytest.mark.timeout(30)
async def test_async_retry_and_dead_letter() -> None:
    tries: dict[str, int] = {}

    async def handler(value: str) -> None:
        tries[value] = tries.get(value, 0) + 1
        if value == "later" and tries[value] == 1:
            raise Retry(delay=0.02)
        if value == "bad":
            raise KeyError(value)

    async with (
        Producer(bind="tcp://127.0.0.1:0", max_attempts=2, backoff=FAST) as producer,
        Worker(handler, connect=producer.endpoint) as worker,
    ):
        worker.start()
        for v in ("later", "bad", "ok"):
            await producer.send(v)
        await producer.join(timeout=20)
        (letter,) = producer.dead_letters()
        assert letter.value == "bad" and letter.attempts == 2
        assert tries == {"later": 2, "bad": 2, "ok": 1}


@pytest.mark.timeout(30)
async def test_async_fire_and_forget_with_raw_push_and_sink(raw_socket) -> None:  # type: ignore[no-untyped-def]
    async with (
        Sink(bind="tcp://127.0.0.1:0") as sink,
        Worker(lambda v: v.upper(), bind="tcp://127.0.0.1:0", acks=False, sink=sink.endpoint) as w,
    ):
        w.start()
        raw = raw_socket(zmq.PUSH)
        raw.connect(w.endpoint)
        raw.send(b"raw")
        async with Producer(connect=w.endpoint, acks=False) as producer:
            await producer.send("text")
        got = []
        async for r in sink.results(timeout=5):
            got.append(r.value)
            if len(got) == 2:
                break
        assert sorted(map(repr, got)) == sorted(map(repr, [b"RAW", "TEXT"]))


@pytest.mark.timeout(20)
async def test_async_join_timeout_and_leftovers() -> None:
    producer = Producer(bind="tcp://127.0.0.1:0")
    await producer.send("x")
    with pytest.raises(RequestTimeout):
        await producer.join(timeout=0.05)
    assert producer.close() == [(1, "x")]  # plain: closes at once


@pytest.mark.timeout(20)
async def test_async_worker_feeds_a_sync_producer() -> None:
    from zmqkit.patterns import Producer as SyncProducer

    with SyncProducer(bind="tcp://127.0.0.1:0") as producer:
        async with Worker(lambda v: v + 1, connect=producer.endpoint) as worker:
            worker.start()
            producer.send(1)
            await asyncio.to_thread(producer.join, 10)
        assert [r.value for r in producer.results(timeout=0.2)] == [2]


@pytest.mark.timeout(20)
async def test_async_send_many() -> None:
    async with (
        Producer(bind="tcp://127.0.0.1:0") as producer,
        Worker(lambda v: -v, connect=producer.endpoint) as worker,
    ):
        worker.start()
        ids = await producer.send_many(range(10))
        await producer.join(timeout=10)
        assert {r.id: r.value async for r in producer.results(timeout=0.2)} == {i: -n for n, i in enumerate(ids)}
