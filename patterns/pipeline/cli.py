"""The pipeline's CLI: ``zmqkit push``, ``zmqkit pull`` and ``zmqkit bench pipeline``."""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from zmqkit.bench import Row, print_table, raw_pushpull, spawn
from zmqkit.cli import (
    CurveFlags,
    DiscoveryFlags,
    MetricsFlags,
    ZmqkitGroup,
    bench,
    curve_options,
    discovery_options,
    import_object,
    main,
    metrics_options,
    stop_signals,
    wait_until_stopped,
)
from zmqkit.codecs import unpack
from zmqkit.endpoints import free_tcp_endpoint
from zmqkit.errors import RequestTimeout, ZmqkitError
from zmqkit.sockets import SocketOptions

from .spool import Spool
from .sync import Producer, Worker

__all__ = ["push", "pull", "worker", "dead", "bench_pipeline"]


@main.command()
@click.argument("endpoint")
@click.argument("message", required=False, default="-")
@click.option("--bind/--connect", default=True, show_default=True, help="Bind ENDPOINT (workers connect) or connect.")
@click.option("--acks/--no-acks", default=True, show_default=True, help="Wait for acks, or fire and forget.")
@click.option("--codec", default="str", show_default=True, help="How to encode each message (str, json, bytes...).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for workers to finish.")
@curve_options("bind")
@discovery_options("announce")
def push(
    endpoint: str,
    message: str,
    bind: bool,
    acks: bool,
    codec: str,
    timeout: float,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
) -> None:
    """Put MESSAGE (or each line of stdin with "-") into a pipeline; print results and dead letters.

    With --announce NAME the bound producer is announced on the fabric, for `zmqkit worker --service NAME`."""
    lines = [line.rstrip("\n") for line in sys.stdin] if message == "-" else [message]
    if discovery.wanted and not bind:
        raise click.UsageError("--announce needs --bind: a producer announces the endpoint it binds")
    binds, connects = (endpoint, None) if bind else (None, endpoint)
    with (
        discovery.joined(curve.secret) as fabric,
        Producer(
            binds,
            connects,
            acks=acks,
            codec=codec,
            announce=discovery.name,
            advertise=discovery.advertise,
            fabric=fabric,
            curve=curve.for_side(serving=bind),
        ) as producer,
    ):
        if bind:
            named = f", announced as {discovery.name!r}" if discovery.wanted else ""
            click.echo(f"producer on {producer.endpoint}{named}", err=True)
        for line in lines:
            producer.send(line if codec != "json" else _json(line), timeout=timeout)
        if not acks:
            return
        try:
            producer.join(timeout=timeout)
        finally:
            for result in producer.results(timeout=0):
                click.echo(f"{result.id}\t{result.value!r}")
            offset, page = 0, producer.dead_letters(0)
            while page:
                for letter in page:
                    click.echo(f"dead {letter.id}\t{letter.value!r}\t{letter.error}", err=True)
                offset += len(page)
                page = producer.dead_letters(offset)
        stats = producer.stats()
        click.echo(f"acked {stats['acked']}, dead {stats['dead']}, retried {stats['retried']}", err=True)
        if stats["dead"]:
            sys.exit(1)


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {text!r} ({exc})") from None


@main.command()
@click.argument("endpoint", required=False)
@click.option("--bind/--connect", default=False, show_default=True, help="Bind ENDPOINT or connect to a producer.")
@click.option("--acks/--no-acks", default=True, show_default=True, help="Acknowledge (acked producer) or plain PULL.")
@click.option("--count", default=0, show_default=True, help="Stop after this many messages (0: until Ctrl-C).")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled payloads (trusted producers only).")
@curve_options("bind")
@discovery_options("find")
@metrics_options
def pull(
    endpoint: str | None,
    bind: bool,
    acks: bool,
    count: int,
    allow_pickle: bool,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
    metrics: MetricsFlags,
) -> None:
    """Take messages from a pipeline (ENDPOINT, or every producer of --service NAME) and print each one
    (acknowledging it) until Ctrl-C or --count."""
    _one_source(endpoint is not None, discovery, "ENDPOINT")
    if bind and discovery.wanted:
        raise click.UsageError("--bind binds ENDPOINT; with --service the producers are found, not bound")
    done = threading.Event()
    seen = 0

    def show(value: object) -> None:
        nonlocal seen
        click.echo(value if isinstance(value, str) else repr(value))
        seen += 1
        if count and seen >= count:
            done.set()

    binds, connects = (endpoint, None) if bind else (None, endpoint)
    # A pull usually waits for a producer that is not up yet: retry the connection every 100 ms instead of
    # backing off to 2 s, so a `zmqkit push` started later is served at once (the Worker greets it on connect).
    options = SocketOptions(reconnect_ivl_max_ms=0)
    with discovery.joined(curve.secret) as fabric:
        worker = Worker(
            show,
            connect=connects,
            bind=binds,
            acks=acks,
            credit=1,
            allow_pickle=allow_pickle,
            service=discovery.name,
            fabric=fabric,
            options=options,
            curve=curve.for_side(serving=bind),
        )
        if bind or discovery.wanted:
            click.echo(f"worker on {_where(worker)}", err=True)
        with stop_signals(done), worker, metrics.serving(worker, service="pull"):
            worker.start()
            wait_until_stopped(done)


def _where(worker: Any) -> str:
    # A blocking worker's lanes (one per --concurrency) each connect to every endpoint: name each once.
    return ", ".join(dict.fromkeys(worker.endpoints)) if worker.service is None else f"service {worker.service!r}"


def _one_source(endpoints: bool, discovery: DiscoveryFlags, what: str) -> None:
    """A command that takes endpoints takes them, or --service, not both nor neither."""
    if endpoints and discovery.wanted:
        raise click.UsageError(f"give {what} or --service NAME, not both")
    if not endpoints and not discovery.wanted:
        raise click.UsageError(f"give {what} or --service NAME (with --fabric)")


@main.command()
@click.argument("handler")
@click.option("--connect", "connects", multiple=True, help="A producer to take work from (repeatable).")
@click.option("--bind", "binds", help="Bind this endpoint instead, for one producer that connects here.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1), help="Handlers at once.")
@click.option("--credit", type=click.IntRange(min=1), help="Messages held at once per producer (default: adaptive).")
@click.option("--sink", help="Push results to a Sink at this endpoint instead of back to the producer.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled payloads (trusted producers only).")
@curve_options("bind")
@discovery_options("find")
@metrics_options
def worker(
    handler: str,
    connects: tuple[str, ...],
    binds: str | None,
    concurrency: int,
    credit: int | None,
    sink: str | None,
    allow_pickle: bool,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
    metrics: MetricsFlags,
) -> None:
    """Run HANDLER (MODULE:FUNCTION, importable from here) on a pipeline's messages until Ctrl-C or SIGTERM.

    The function's return value acknowledges a message; raising Retry or any other exception retries it.
    Ctrl-C or SIGTERM finishes what the worker holds and acknowledges it before exiting. An ``async def``
    function runs on an event loop, ``--concurrency`` calls at once.
    """
    function = import_object(handler, "MODULE:FUNCTION")
    if not callable(function):
        raise click.BadParameter(f"{handler!r} is not a function", param_hint="HANDLER")
    if connects and binds:
        raise click.UsageError("give --connect ENDPOINT (repeatable) or --bind ENDPOINT, not both")
    _one_source(bool(connects or binds), discovery, "--connect ENDPOINT (repeatable), --bind ENDPOINT")
    with discovery.joined(curve.secret) as fabric:
        settings: dict[str, Any] = {
            "connect": list(connects) or None,
            "bind": binds,
            "concurrency": concurrency,
            "credit": credit,
            "sink": sink,
            "allow_pickle": allow_pickle,
            "service": discovery.name,
            "fabric": fabric,
            "curve": curve.for_side(serving=bool(binds)),
        }
        if inspect.iscoroutinefunction(function):
            from .aio import Worker as AsyncWorker

            async def serve() -> None:
                async_worker = AsyncWorker(function, **settings)
                click.echo(f"worker {handler} (async) on {_where(async_worker)}", err=True)
                with metrics.serving(async_worker, service=handler):
                    await async_worker.run()

            asyncio.run(serve())
            return
        sync_worker = Worker(function, **settings)
        click.echo(f"worker {handler} on {_where(sync_worker)} (concurrency {concurrency})", err=True)
        with metrics.serving(sync_worker, service=handler):
            sync_worker.run()


@main.group(cls=ZmqkitGroup)
def dead() -> None:
    """A spool-backed producer's dead letters, from the shell (safe while the producer runs)."""


_SPOOL = click.option(
    "--spool", required=True, type=click.Path(exists=True, dir_okay=False), help="The producer's spool file."
)


def _shown(codec: int, payload: bytes) -> str:
    """A dead letter's value as text; a payload we may not or cannot decode is described, never unpickled."""
    try:
        value = unpack(codec, payload)
    except ZmqkitError as exc:
        return f"<{len(payload)} bytes, codec {codec}, not decoded: {exc}>"
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return json.dumps(value, default=repr)


@dead.command("list")
@_SPOOL
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0), help="Skip this many first.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="Show at most this many.")
def dead_list(spool: str, offset: int, limit: int) -> None:
    """One line per dead letter, oldest first: id, attempts, last error, value."""
    store = Spool(spool)
    try:
        rows = list(store.dead_letters(offset, limit))
        total = store.dead_count()
    finally:
        store.close()
    for msg_id, codec, payload, attempts, error in rows:
        value = _shown(codec, payload)
        click.echo(f"{msg_id}\t{attempts}\t{error}\t{value if len(value) <= 80 else value[:77] + '...'}")
    click.echo(f"{len(rows)} shown of {total} dead letter(s)", err=True)


@dead.command("show")
@click.argument("msg_id", type=int)
@_SPOOL
def dead_show(msg_id: int, spool: str) -> None:
    """Everything about one dead letter: its value in full, attempts and last error."""
    store = Spool(spool)
    try:
        row = next((r for r in store.dead_letters() if r[0] == msg_id), None)
    finally:
        store.close()
    if row is None:
        raise click.ClickException(f"no dead letter {msg_id} in {spool}")
    _, codec, payload, attempts, error = row
    click.echo(f"id: {msg_id}\nattempts: {attempts}\nerror: {error}\ncodec: {codec}\nvalue: {_shown(codec, payload)}")


@dead.command("resubmit")
@click.argument("msg_ids", nargs=-1, type=int, required=True)
@_SPOOL
def dead_resubmit(msg_ids: tuple[int, ...], spool: str) -> None:
    """Put dead letters back to work: the producer on SPOOL sends them again within a second (or when it next
    starts), with a fresh attempt count."""
    store = Spool(spool)
    try:
        missing = [i for i in msg_ids if not store.ask_resubmit(i)]
    finally:
        store.close()
    if missing:
        raise click.ClickException(f"no dead letter {', '.join(map(str, missing))} in {spool}")
    click.echo(f"asked the producer to resubmit {len(msg_ids)} message(s)")


@dead.command("purge")
@click.argument("msg_ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@_SPOOL
def dead_purge(msg_ids: tuple[int, ...], everything: bool, spool: str) -> None:
    """Delete dead letters for good: the ones named, or --all."""
    if bool(msg_ids) == everything:
        raise click.UsageError("name the dead letters to purge, or give --all")
    store = Spool(spool)
    try:
        gone = store.purge(None if everything else list(msg_ids))
    finally:
        store.close()
    click.echo(f"purged {gone} dead letter(s)")


# -- bench ---------------------------------------------------------------------------------------------------


class _Count:
    """The per-message handler every variant calls: count, and say when ``n`` arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def __call__(self, value: object) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = time.perf_counter()
        elif self.seen >= self.n:
            self.last = time.perf_counter()
            self.done.set()

    def rate(self) -> float:
        return (self.n - 1) / (self.last - self.first)


def _producer_proc(endpoint: str, n: int, size: int, acks: bool, many: bool) -> None:
    body = b"x" * size
    binds, connects = (endpoint, None) if acks else (None, endpoint)
    with Producer(binds, connects, acks=acks, codec="bytes") as producer:
        if many:
            for start in range(0, n, 1000):
                producer.send_many([body] * min(1000, n - start))
        else:
            for _ in range(n):
                producer.send(body)
        if acks:
            producer.join(timeout=120)


def _measure(label: str, n: int, run: Callable[[_Count], None]) -> float:
    count = _Count(n)
    thread = threading.Thread(target=run, args=(count,), daemon=True)
    with click.progressbar(length=n, label=f"{label:<22}", file=sys.stderr) as bar:
        thread.start()
        shown = 0
        while not count.done.wait(0.1):
            if not thread.is_alive():
                raise RequestTimeout(f"bench {label}: stopped after {count.seen} of {n} messages")
            bar.update(count.seen - shown)
            shown = count.seen
        bar.update(n - shown)
    thread.join(30)
    return count.rate()


# raw_pushpull's PULL has an unlimited receive queue; the zmqkit worker gets the same, so like is compared with like.
_LIKE_RAW = SocketOptions(rcvhwm=0)


def _zmqkit_run(n: int, size: int, acks: bool, many: bool, credit: int | None = None) -> Callable[[_Count], None]:
    def run(count: _Count) -> None:
        if acks:
            endpoint = free_tcp_endpoint()
            proc = spawn(_producer_proc, endpoint, n, size, True, many)
            worker = Worker(count, connect=endpoint, credit=credit, options=_LIKE_RAW)
        else:
            worker = Worker(count, bind="tcp://127.0.0.1:0", acks=False, options=_LIKE_RAW)
            proc = spawn(_producer_proc, worker.endpoint, n, size, False, many)
        with worker:
            worker.start()
            if not count.done.wait(120):
                return
        proc.join(30)

    return run


def _raw_run(n: int, size: int) -> Callable[[_Count], None]:
    def run(count: _Count) -> None:
        raw_pushpull(n, size, count)
        count.last = count.last or time.perf_counter()
        count.done.set()

    return run


@bench.command("pipeline")
@click.option("-n", "--messages", default=200_000, show_default=True, help="Messages per measurement.")
@click.option("--size", default=100, show_default=True, help="Payload bytes.")
@click.option(
    "--credit", type=int, default=None, help="Fixed messages in flight per worker (default: the Worker's default)."
)
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds; the median of each is reported.")
def bench_pipeline(messages: int, size: int, credit: int | None, rounds: int) -> None:
    """Fire-and-forget and acknowledged throughput beside raw pyzmq PUSH/PULL (same handler call)."""
    if messages < 2:
        raise click.BadParameter(f"{messages!r}: need at least 2 messages", param_hint="--messages")
    if rounds < 1:
        raise click.BadParameter(f"{rounds!r}: need at least 1 round", param_hint="--rounds")
    credit_name = "default credit" if credit is None else f"credit {credit}"
    variants = [  # (row name, acks, send_many, target)
        ("fire-and-forget, send()", False, False, ">= 0.80x"),
        ("fire-and-forget, send_many()", False, True, ">= 0.80x"),
        (f"acknowledged, send(), {credit_name}", True, False, ">= 0.25x"),
        (f"acknowledged, send_many(), {credit_name}", True, True, ">= 0.25x"),
    ]
    raws: list[float] = []
    figures: list[list[float]] = [[] for _ in variants]
    for r in range(1, rounds + 1):
        # Interleaved, so a burst of load from elsewhere on the machine hits every variant alike.
        raws.append(_measure(f"{r}/{rounds} raw PUSH/PULL", messages, _raw_run(messages, size)))
        for i, (name, acks, many, _) in enumerate(variants):
            run = _zmqkit_run(messages, size, acks, many, credit)
            figures[i].append(_measure(f"{r}/{rounds} {name.split(',')[0]}", messages, run))
    raw = statistics.median(raws)
    print_table(
        f"zmqkit bench pipeline: {messages:,} messages of {size} bytes, producer in another process, "
        f"medians of {rounds} round(s)",
        [Row("raw pyzmq PUSH/PULL", raw, "msg/s", samples=rounds)]
        + [
            Row(name, statistics.median(values), "msg/s", raw, target, samples=rounds)
            for (name, _, _, target), values in zip(variants, figures, strict=True)
        ],
    )
