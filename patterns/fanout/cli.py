"""Fanout commands: ``zmqkit pub``, ``sub``, ``logs``, ``forwarder`` and ``bench fanout``."""

from __future__ import annotations

import json
import logging
import logging.handlers
import statistics
import time
from datetime import datetime
from typing import Any

import click

from zmqkit.bench import Row, print_table, raw_pubsub, spawn
from zmqkit.cli import (
    CurveFlags,
    DiscoveryFlags,
    MetricsFlags,
    bench,
    curve_options,
    discovery_options,
    main,
    metrics_options,
    stop_signals,
    wait_until_stopped,
)
from zmqkit.sockets import SocketOptions

from .logs import LEVELS, log_topics
from .sync import Forwarder, Publisher, Subscriber

__all__ = ["pub", "sub", "logs", "forwarder", "bench_fanout"]


@main.command()
@click.argument("endpoint")
@click.argument("topic")
@click.argument("message")
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1), help="How many times to send.")
@click.option("--bind", "do_bind", is_flag=True, help="Bind ENDPOINT instead of connecting to it.")
@click.option("--wait", default=1, show_default=True, type=click.IntRange(min=0), help="Subscribers to wait for.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for them.")
@curve_options("bind")
@discovery_options("announce")
def pub(
    endpoint: str,
    topic: str,
    message: str,
    count: int,
    do_bind: bool,
    wait: int,
    timeout: float,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
) -> None:
    """Publish MESSAGE on TOPIC, after WAIT subscribers joined (connects to a forwarder's XSUB by default).

    With --bind and --announce NAME, subscribers find it with `zmqkit sub --service NAME`."""
    if discovery.wanted and not do_bind:
        raise click.UsageError("--announce needs --bind: a publisher announces the endpoint it binds")
    kwargs: dict[str, Any] = {"bind": endpoint} if do_bind else {"connect": endpoint}
    with (
        discovery.joined(curve.secret) as fabric,
        Publisher(
            codec="str",
            announce=discovery.name,
            advertise=discovery.advertise,
            fabric=fabric,
            curve=curve.for_side(serving=do_bind),
            **kwargs,
        ) as publisher,
    ):
        if wait:
            publisher.wait_for_subscribers(wait, timeout=timeout)
        for _ in range(count):
            publisher.publish(topic, message)
    click.echo(f"published {count} on {topic!r}")


def _text(body: Any) -> Any:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return body


@main.command()
@click.argument("endpoint", required=False)
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", default=0, type=click.IntRange(min=0), help="Stop after this many messages (0: never).")
@click.option("--timeout", default=None, type=float, help="Stop with an error after this many idle seconds.")
@click.option("--bind", "do_bind", is_flag=True, help="Bind ENDPOINT instead of connecting to it.")
@curve_options("bind")
@discovery_options("find")
def sub(
    endpoint: str | None,
    topics: tuple[str, ...],
    as_json: bool,
    count: int,
    timeout: float | None,
    do_bind: bool,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
) -> None:
    """Print messages on TOPICS (prefixes or subjects like orders.*.paid, logs.>; none: everything) from
    ENDPOINT, or from every publisher of --service NAME (then every argument is a topic)."""
    kwargs: dict[str, Any] = {"bind": endpoint} if do_bind else {"endpoints": endpoint}
    if discovery.wanted:
        if do_bind:
            raise click.UsageError("--service finds publishers to connect to: it does not go with --bind")
        topics, kwargs = ((endpoint, *topics) if endpoint is not None else topics), {"service": discovery.name}
    elif endpoint is None:
        raise click.UsageError("give ENDPOINT or --service NAME (with --fabric)")
    with (
        discovery.joined(curve.secret) as fabric,
        Subscriber(
            topics=list(topics) or [""], fabric=fabric, curve=curve.for_side(serving=do_bind), **kwargs
        ) as subscriber,
    ):
        seen = 0
        while not count or seen < count:
            msg = subscriber.recv(timeout=timeout)
            seen += 1
            if as_json:
                record = {
                    "topic": msg.topic,
                    "body": _text(msg.body),
                    "publisher": msg.publisher.hex() if msg.publisher else None,
                    "seq": msg.seq,
                    "missed": subscriber.missed,
                }
                click.echo(json.dumps(record, default=repr))
            else:
                click.echo(f"{msg.topic} {_text(msg.body)}")


def _log_line(record: dict[str, Any]) -> str:
    """One record as a journal-like line: time, service, level, logger, message (and its exception)."""
    when = datetime.fromtimestamp(float(record.get("time", 0))).isoformat(sep=" ", timespec="milliseconds")
    line = f"{when} {record.get('service', '?')} {record.get('level', '?')} {record.get('logger', '')}: "
    line += str(record.get("message", ""))
    exception = record.get("exception")
    return f"{line}\n{str(exception).rstrip()}" if exception else line


@main.command()
@click.option("--connect", "connects", help="Endpoints to read from, comma-separated: services' binds or a forwarder.")
@click.option("--bind", "binds", help="Endpoint to bind, for services whose handlers connect here.")
@click.option("--service", "services_", multiple=True, help="Only this service (repeatable; default: all).")
@click.option(
    "--level",
    default="debug",
    show_default=True,
    type=click.Choice(LEVELS, case_sensitive=False),
    help="This level and above.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, as published.")
@click.option("--to", "to_file", type=click.Path(dir_okay=False), help="Also append the lines to FILE (rotated).")
@click.option("--max-bytes", default=10 * 2**20, show_default=True, type=click.IntRange(min=1), help="Rotate at.")
@click.option("--backups", default=5, show_default=True, type=click.IntRange(min=0), help="Rotated files kept.")
@click.option("--count", default=0, type=click.IntRange(min=0), help="Stop after this many records (0: never).")
@click.option("--timeout", default=None, type=float, help="Stop with an error after this many idle seconds.")
@curve_options("bind")
def logs(
    connects: str | None,
    binds: str | None,
    services_: tuple[str, ...],
    level: str,
    as_json: bool,
    to_file: str | None,
    max_bytes: int,
    backups: int,
    count: int,
    timeout: float | None,
    curve: CurveFlags,
) -> None:
    """Follow the log records of many services at once (published by zmqkit.patterns.LogHandler)."""
    if not connects and not binds:
        raise click.UsageError("give --connect ENDPOINTS or --bind ENDPOINT")
    out: logging.Handler | None = None
    if to_file:
        out = logging.handlers.RotatingFileHandler(to_file, maxBytes=max_bytes, backupCount=backups)
        out.setFormatter(logging.Formatter("%(message)s"))
    topics = log_topics(services_, level)
    endpoints = connects.split(",") if connects else None
    with Subscriber(endpoints, bind=binds, topics=topics, curve=curve.for_side(serving=bool(binds))) as subscriber:
        if binds:
            click.echo(f"listening on {subscriber.endpoint}", err=True)
        seen = 0
        try:
            while not count or seen < count:
                body = subscriber.recv(timeout=timeout).body
                record = body if isinstance(body, dict) else {"message": _text(body)}
                line = json.dumps(record) if as_json else _log_line(record)
                click.echo(line)
                if out is not None:
                    out.emit(logging.makeLogRecord({"msg": line}))
                seen += 1
        finally:
            if out is not None:
                out.close()


@main.command()
@click.option("--xsub", required=True, help="Endpoint publishers connect to, e.g. tcp://*:5557.")
@click.option("--xpub", required=True, help="Endpoint subscribers connect to, e.g. tcp://*:5558.")
@click.option("--last-value-cache", default=0, show_default=True, type=click.IntRange(min=0), help="Topics to cache.")
@curve_options("server")
@metrics_options
def forwarder(xsub: str, xpub: str, last_value_cache: int, curve: CurveFlags, metrics: MetricsFlags) -> None:
    """Run an XSUB/XPUB forwarder until Ctrl-C or SIGTERM.

    CURVE: the forwarder binds both sides, so it is the CURVE server to publishers and subscribers alike: both
    connect with --curve-server set to the forwarder's public key, and --curve-allow (if given) must list both.
    """
    security = curve.for_server()
    with (
        stop_signals() as stop,
        Forwarder(xsub, xpub, last_value_cache=last_value_cache, curve=security) as fwd,
        metrics.serving(fwd, service="forwarder"),
    ):
        click.echo(f"forwarding {fwd.xsub_endpoint} -> {fwd.xpub_endpoint}", err=True)
        wait_until_stopped(stop)


def _zmqkit_publisher(endpoint: str, n: int, size: int) -> None:
    with Publisher(connect=endpoint, codec="bytes", options=SocketOptions(sndhwm=0, linger_ms=-1)) as publisher:
        publisher.wait_for_subscribers(1, timeout=30)
        body = b"x" * size
        publish = publisher.publish
        for _ in range(n):
            publish("bench", body)


def zmqkit_pubsub(n: int, size: int) -> float:
    """Messages/s of a zmqkit Publisher (other process) -> Subscriber, the same shape as ``raw_pubsub``."""
    with Subscriber(bind="tcp://127.0.0.1:0", topics=["bench"], options=SocketOptions(rcvhwm=0)) as subscriber:
        proc = spawn(_zmqkit_publisher, subscriber.endpoint, n, size)
        subscriber.recv(timeout=30)
        messages = iter(subscriber)
        start = time.perf_counter()
        for _ in range(n - 1):
            next(messages)
        elapsed = time.perf_counter() - start
        proc.join(10)
        if subscriber.missed:
            raise click.ClickException(f"the benchmark lost {subscriber.missed} messages")
    return (n - 1) / elapsed


@bench.command("fanout")
@click.option("--count", "n", default=200_000, show_default=True, type=click.IntRange(min=2))
@click.option("--size", default=100, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Interleaved rounds; medians shown."
)
def bench_fanout(n: int, size: int, rounds: int) -> None:
    """zmqkit Publisher -> Subscriber beside raw pyzmq PUB/SUB, [topic, body] frames, TCP loopback."""
    raws, ours = [], []
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits both sides alike
        raws.append(raw_pubsub(n, size))
        ours.append(zmqkit_pubsub(n, size))
    print_table(
        f"fanout, {n:,} messages of {size} bytes, medians of {rounds} round(s)",
        [Row("pub -> sub", statistics.median(ours), "msg/s", statistics.median(raws), ">= 0.8x", samples=rounds)],
    )
