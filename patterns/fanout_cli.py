"""Fanout commands: ``zmqkit pub``, ``sub``, ``forwarder``, ``services`` and ``bench fanout``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from zmqkit.bench import Row, print_table, raw_pubsub, spawn
from zmqkit.cli import CurveFlags, bench, curve_options, main, stop_signals, wait_until_stopped
from zmqkit.sockets import SocketOptions

from .fanout import Forwarder, Publisher, Subscriber
from .presence import Directory

__all__ = ["pub", "sub", "forwarder", "services", "bench_fanout"]


@main.command()
@click.argument("endpoint")
@click.argument("topic")
@click.argument("message")
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1), help="How many times to send.")
@click.option("--bind", "do_bind", is_flag=True, help="Bind ENDPOINT instead of connecting to it.")
@click.option("--wait", default=1, show_default=True, type=click.IntRange(min=0), help="Subscribers to wait for.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for them.")
@curve_options("bind")
def pub(
    endpoint: str, topic: str, message: str, count: int, do_bind: bool, wait: int, timeout: float, curve: CurveFlags
) -> None:
    """Publish MESSAGE on TOPIC, after WAIT subscribers joined (connects to a forwarder's XSUB by default)."""
    kwargs: dict[str, Any] = {"bind": endpoint} if do_bind else {"connect": endpoint}
    with Publisher(codec="str", curve=curve.for_side(serving=do_bind), **kwargs) as publisher:
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
@click.argument("endpoint")
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", default=0, type=click.IntRange(min=0), help="Stop after this many messages (0: never).")
@click.option("--timeout", default=None, type=float, help="Stop with an error after this many idle seconds.")
@click.option("--bind", "do_bind", is_flag=True, help="Bind ENDPOINT instead of connecting to it.")
@curve_options("bind")
def sub(
    endpoint: str,
    topics: tuple[str, ...],
    as_json: bool,
    count: int,
    timeout: float | None,
    do_bind: bool,
    curve: CurveFlags,
) -> None:
    """Print messages on TOPICS (prefixes or subjects like orders.*.paid, logs.>; none: everything)."""
    kwargs: dict[str, Any] = {"bind": endpoint} if do_bind else {"endpoints": endpoint}
    with Subscriber(topics=list(topics) or [""], curve=curve.for_side(serving=do_bind), **kwargs) as subscriber:
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


@main.command()
@click.option("--xsub", required=True, help="Endpoint publishers connect to, e.g. tcp://*:5557.")
@click.option("--xpub", required=True, help="Endpoint subscribers connect to, e.g. tcp://*:5558.")
@click.option("--last-value-cache", default=0, show_default=True, type=click.IntRange(min=0), help="Topics to cache.")
@curve_options("server")
def forwarder(xsub: str, xpub: str, last_value_cache: int, curve: CurveFlags) -> None:
    """Run an XSUB/XPUB forwarder until Ctrl-C or SIGTERM.

    CURVE: the forwarder binds both sides, so it is the CURVE server to publishers and subscribers alike: both
    connect with --curve-server set to the forwarder's public key, and --curve-allow (if given) must list both.
    """
    security = curve.for_server()
    with stop_signals() as stop, Forwarder(xsub, xpub, last_value_cache=last_value_cache, curve=security) as fwd:
        click.echo(f"forwarding {fwd.xsub_endpoint} -> {fwd.xpub_endpoint}", err=True)
        wait_until_stopped(stop)


@main.command()
@click.option("--fabric", required=True, help="Where announcements arrive: a forwarder's XPUB or a Presence.")
@click.option("--listen", default=2.5, show_default=True, help="Seconds to collect heartbeats before printing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@curve_options("client")
def services(fabric: str, listen: float, as_json: bool, curve: CurveFlags) -> None:
    """Print the directory of services announced on FABRIC (name, status, endpoint, meta)."""
    with Directory(fabric, curve=curve.for_client()) as directory:
        # A listening window, not a synchronisation: heartbeats come once per interval (default 1 s), so
        # every live service is heard within a little more than one interval (a last-value cache: at once).
        time.sleep(listen)
        entries = directory.lookup()
    if as_json:
        for e in entries:
            click.echo(json.dumps({"service": e.service, "status": e.status, "endpoint": e.endpoint, "meta": e.meta}))
        return
    if not entries:
        click.echo(f"no services announced on {fabric}")
        return
    rows = [(e.service, e.status, e.endpoint, json.dumps(e.meta) if e.meta else "") for e in entries]
    widths = [max(len(r[i]) for r in [("SERVICE", "STATUS", "ENDPOINT", "META"), *rows]) for i in range(4)]
    for row in [("SERVICE", "STATUS", "ENDPOINT", "META"), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


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
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Best of N, each side.")
def bench_fanout(n: int, size: int, rounds: int) -> None:
    """zmqkit Publisher -> Subscriber beside raw pyzmq PUB/SUB, [topic, body] frames, TCP loopback."""
    raw = ours = 0.0
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits both sides alike
        raw = max(raw, raw_pubsub(n, size))
        ours = max(ours, zmqkit_pubsub(n, size))
    print_table(
        f"fanout, {n:,} messages of {size} bytes, best of {rounds}",
        [Row("pub -> sub", ours, "msg/s", raw, ">= 0.8x")],
    )
