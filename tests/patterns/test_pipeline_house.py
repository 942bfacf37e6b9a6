"""The pipeline's house rules: one stop rule for both runners, Closed after close, how asyncio runners close,
signatures that show every parameter, exact counters under concurrency."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable

import pytest

import zmqkit.asyncio as zasync
from zmqkit import Closed
from zmqkit.patterns import Producer, Sink, Worker
from zmqkit.patterns.pipeline.protocol import WorkerProtocol


def test_a_worker_protocol_is_finished_only_when_nothing_is_in_hand_or_unsent() -> None:
    proto = WorkerProtocol(credit=2)
    proto.bye()
    tasks, _ = proto.feed(
        [b"", b"ZKP\x01", b"TASK", b"\x00" * 7 + b"\x01" + b"\x00\x00\x00\x01" + b"\x00" + b"\x00" * 4]
    )
    proto.feed([b"", b"ZKP\x01", b"BYE"])
    assert proto.closed and not proto.finished  # the producer answered BYE, but a task is in hand
    proto.acked([tasks[0].id])
    assert not proto.finished  # ran, but its ack is not sent yet
    proto.flush()
    assert proto.finished


@pytest.mark.timeout(30)
@pytest.mark.parametrize("runner", ["sync", "asyncio"])
def test_stop_finishes_and_acks_the_task_in_hand_after_the_producer_says_bye(runner: str) -> None:
    """Both runners stop on the same rule: the producer answered BYE and nothing is in hand."""
    started, release = threading.Event(), threading.Event()

    def handler(value: int) -> int:
        started.set()
        release.wait(10)
        return value + 1

    with Producer(bind="tcp://127.0.0.1:0", worker_timeout=30) as producer:
        producer.send(41)
        if runner == "sync":
            worker = Worker(handler, connect=producer.endpoint, credit=1).start()
            assert started.wait(10)
            stopper = threading.Thread(target=worker.stop, args=(20,))
            stopper.start()
            release.set()
            stopper.join(20)
            worker.close()
        else:

            async def main() -> None:
                async def async_handler(value: int) -> int:
                    return await asyncio.to_thread(handler, value)

                worker = zasync.Worker(async_handler, connect=producer.endpoint, credit=1).start()
                assert await asyncio.to_thread(started.wait, 10)
                stopping = asyncio.ensure_future(worker.stop(20))
                await asyncio.sleep(0)  # let stop() set the flag; the handler is still running
                release.set()
                await stopping
                worker.close()

            asyncio.run(main())
        producer.join(timeout=5)
        assert [r.value for r in producer.results(timeout=0)] == [42]
        assert producer.stats()["redelivered"] == 0


@pytest.mark.timeout(20)
def test_use_after_close_raises_closed_naming_the_class_and_endpoint() -> None:
    producer = Producer(bind="tcp://127.0.0.1:0")
    producer.close()
    for call in (lambda: producer.send(b"x"), lambda: producer.send_many([1]), lambda: producer.join(1)):
        with pytest.raises(Closed, match=f"Producer on {producer.endpoint}"):
            call()
    plain = Producer(bind="tcp://127.0.0.1:0", acks=False)
    plain.close()
    with pytest.raises(Closed, match="Producer"):
        plain.send(b"bare bytes")  # the fast path too
    worker = Worker(print, connect=producer.endpoint)
    worker.close()
    with pytest.raises(Closed, match=f"Worker of {producer.endpoint}"):
        worker.start()
    sink = Sink(bind="tcp://127.0.0.1:0")
    sink.close()
    with pytest.raises(Closed, match="Sink"):
        list(sink.results(timeout=0))
    assert producer.close() == [] and worker.close() is None and sink.close() is None  # idempotent


@pytest.mark.timeout(30)
def test_asyncio_close_is_plain_and_aclose_drains() -> None:
    async def main() -> None:
        producer = zasync.Producer(bind="tcp://127.0.0.1:0")
        async with zasync.Worker(lambda v: v * 2, connect=producer.endpoint) as worker:
            worker.start()
            ids = await producer.send_many(range(20))
            assert await producer.aclose(timeout=10) == []  # drained: every message acknowledged first
            assert {r.id: r.value for r in producer.protocol.results} == {i: 2 * n for n, i in enumerate(ids)}  # type: ignore[union-attr]
        with pytest.raises(Closed):
            await producer.send(1)
        with pytest.raises(Closed):
            worker.start()
        lonely = zasync.Producer(bind="tcp://127.0.0.1:0")
        await lonely.send("nobody takes this")
        assert await lonely.aclose(drain=False) == [(1, "nobody takes this")]
        later = zasync.Producer(bind="tcp://127.0.0.1:0")
        await later.send("x")
        assert later.close() == [(1, "x")]  # plain, from async code, no await
        async with zasync.Sink(bind="tcp://127.0.0.1:0") as sink:
            pass
        with pytest.raises(Closed):
            [r async for r in sink.results(timeout=0)]

    asyncio.run(main())


@pytest.mark.parametrize(
    "cls", [Producer, Worker, Sink, zasync.Producer, zasync.Worker, zasync.Sink], ids=lambda c: c.__module__
)
def test_signatures_show_every_parameter(cls: Callable[..., object]) -> None:
    params = inspect.signature(cls).parameters
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()), params
    assert "curve" in params and "options" in params


@pytest.mark.timeout(60)
def test_counters_are_exact_with_many_handler_threads() -> None:
    n = 4000
    with (
        Producer(bind="tcp://127.0.0.1:0") as producer,
        Worker(lambda v: None if v % 3 else v, connect=producer.endpoint, concurrency=4) as worker,
    ):
        worker.start()
        producer.send_many(range(n))
        producer.join(timeout=30)
        assert worker.stats() == {"processed": n, "failed": 0}
