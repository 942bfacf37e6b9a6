"""The ``zmqkit cache`` commands (serve, get, gets, set, add, cas, incr, decr, touch, delete, ping, stats, flush)
and ``zmqkit bench cache``.

zmqkit cache serve --nodes 3                  # three nodes on tcp://127.0.0.1:11311..11313
zmqkit cache set greeting hello --nodes 3     # --nodes N means those N local nodes
zmqkit cache get greeting --nodes tcp://10.0.0.1:11311,tcp://10.0.0.2:11311
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import click

from zmqkit.cli import (
    CurveFlags,
    DiscoveryFlags,
    MetricsFlags,
    ZmqkitGroup,
    bench,
    curve_options,
    discovery_options,
    main,
    metrics_options,
    stop_signals,
    wait_until_stopped,
)
from zmqkit.endpoints import parse_endpoint
from zmqkit.errors import ConfigurationError, RequestTimeout, Unavailable, ZmqkitError

from .client import CacheClient
from .core import Value
from .node import CacheNode

__all__ = ["cache", "DEFAULT_BIND", "node_endpoints"]

DEFAULT_BIND = "tcp://127.0.0.1:11311"


def node_endpoints(spec: str, base: str = DEFAULT_BIND) -> list[str]:
    """``"3"`` -> three endpoints on consecutive ports from ``base``; otherwise comma-separated endpoints."""
    if spec.strip().isdigit():
        count = int(spec)
        ep = parse_endpoint(base, for_bind=True)
        if count < 1:
            raise ConfigurationError(f"bad --nodes {spec!r}: at least 1")
        if count > 1 and (ep.transport != "tcp" or ep.port is None):
            raise ConfigurationError(f"--nodes {count} needs a tcp --bind with a port, not {base!r}")
        if ep.port is None:
            return [base]
        return [f"tcp://{ep.address.rsplit(':', 1)[0]}:{ep.port + i}" for i in range(count)]
    return [e.strip() for e in spec.split(",") if e.strip()]


@dataclass(frozen=True)
class Nodes:
    """Which nodes a client command talks to: ``--nodes`` (endpoints, or N local ones), or ``--service`` on a
    fabric (the nodes announced under that name)."""

    spec: str | None
    discovery: DiscoveryFlags

    @contextlib.contextmanager
    def client(self, timeout: float, curve: CurveFlags, max_item: str | None = None) -> Iterator[CacheClient]:
        if self.discovery.wanted and self.spec is not None:
            raise click.UsageError("give --nodes or --service, not both")
        with self.discovery.joined(curve.secret) as fabric:
            endpoints = None if self.discovery.wanted else node_endpoints(self.spec or "1")
            with CacheClient(
                endpoints,
                service=self.discovery.name,
                fabric=fabric,
                timeout=timeout,
                retries=0,
                curve=curve.for_client(),
                max_item=max_item,
            ) as client:
                yield client


def _nodes_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--nodes``, or ``--service`` with ``--fabric`` (and its CURVE key): the command gets ``nodes: Nodes``."""

    @functools.wraps(fn)
    def command(nodes_spec: str | None, discovery: DiscoveryFlags, **rest: Any) -> Any:
        return fn(nodes=Nodes(nodes_spec, discovery), **rest)

    decorated = discovery_options("find")(command)
    return click.option(
        "--nodes",
        "nodes_spec",
        envvar="ZMQKIT_CACHE_NODES",
        help="Cache nodes: comma-separated endpoints, or N for N local nodes from tcp://127.0.0.1:11311"
        " (default: 1); or --service NAME to find them on a fabric.",
    )(decorated)


_TIMEOUT = click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for a node.")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return json.dumps(value)


@main.group(cls=ZmqkitGroup)
def cache() -> None:
    """A shared cache: run nodes, and get, set or inspect what they hold."""


@cache.command()
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help="Where the (first) node listens.")
@click.option("--nodes", "count", default=1, show_default=True, help="Run N nodes on consecutive ports.")
@click.option("--memory", default="64M", show_default=True, help="Memory per node for keys and values.")
@click.option("--max-item", default="1M", show_default=True, help="Largest value a node stores.")
@click.option("--service", default="cache", show_default=True, help="The service label on this node's metrics.")
@curve_options("server")
@discovery_options("announce")
@metrics_options
def serve(
    bind: str,
    count: int,
    memory: str,
    max_item: str,
    service: str,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
    metrics: MetricsFlags,
) -> None:
    """Run cache nodes until Ctrl-C or SIGTERM (with --nodes N, all N serve with the same CURVE key).

    With --announce NAME --fabric F, each node announces NAME on the fabric (clients made with
    `--service NAME` find it); on Ctrl-C or SIGTERM it announces maintenance, then down once stopped.
    """
    endpoints = node_endpoints(str(count), bind)
    security = curve.for_server()
    if discovery.advertise is not None and len(endpoints) > 1:
        raise click.UsageError(f"--advertise names one endpoint; --nodes {count} runs {len(endpoints)}")
    with stop_signals() as stop, discovery.joined(curve.secret) as fabric:
        nodes = [
            CacheNode(
                ep,
                memory=memory,
                max_item=max_item,
                curve=security,
                announce=discovery.name,
                fabric=fabric,
                advertise=discovery.advertise,
            )
            for ep in endpoints
        ]
        _serve_nodes(nodes, memory, max_item, service, metrics, stop)


def _serve_nodes(
    nodes: list[CacheNode], memory: str, max_item: str, service: str, metrics: MetricsFlags, stop: threading.Event
) -> None:
    """Start the nodes, serve until ``stop``, stop them (announced ones: maintenance first, then down)."""
    try:
        for node in nodes:
            endpoint = node.start()
            announced = f"; announced as {', '.join(node.announced)}" if node.announced else ""
            click.echo(f"cache node listening on {endpoint} (memory {memory}, max item {max_item}){announced}")
        click.echo(f"{len(nodes)} node(s) ready; Ctrl-C to stop", err=True)
        with metrics.serving(*nodes, service=service):
            wait_until_stopped(stop)
        click.echo("stopping", err=True)
    finally:
        for node in nodes:
            node.leave()  # every node in maintenance before the first goes down
        for node in nodes:
            node.stop()


EXIT_MISSING, EXIT_UNREACHABLE, EXIT_ERROR = 1, 3, 4  # the client commands' exit codes (2 is a usage error)
_EXIT_CODES = """
\b
Exit codes:
  0  done
  1  not done: the key is not there (or, for add and cas, the node kept its value)
  2  bad usage
  3  no node answered (unreachable, or timed out)
  4  any other error (authentication refused, bad key, value too large)
"""


class _Missing(click.ClickException):
    exit_code = EXIT_MISSING


class _Unreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


class _Failed(click.ClickException):
    exit_code = EXIT_ERROR


@contextlib.contextmanager
def _calling(nodes: Nodes, timeout: float, curve: CurveFlags, max_item: str | None = None) -> Iterator[CacheClient]:
    """A client for one command; what goes wrong ends the command with its exit code (see _EXIT_CODES)."""
    try:
        with nodes.client(timeout, curve, max_item) as client:
            yield client
    except (Unavailable, RequestTimeout) as exc:
        raise _Unreachable(str(exc)) from None
    except ZmqkitError as exc:
        raise _Failed(str(exc)) from None


def _with_codes(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n" + _EXIT_CODES  # cleaned first: the table is not indented
    return fn


def _client_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What every one-key client command takes (--nodes or --service, --timeout, the CURVE options) and its exit
    codes."""
    return _nodes_options(_TIMEOUT(curve_options("client")(_with_codes(fn))))


_MAX_ITEM = click.option("--max-item", help="Refuse values above this size before sending (default: the node's).")
_TTL = click.option("--ttl", default=0, show_default=True, help="Seconds to keep it (0 = until evicted).")


def _value(value: str | None, as_json: bool, from_file: str | None) -> Any:
    """VALUE as given (``-``: read standard input), as JSON with --json, or a file's bytes with --file."""
    if from_file is not None:
        if value is not None:
            raise click.UsageError("give VALUE or --file, not both")
        with open(from_file, "rb") as f:
            return f.read()
    if value is None:
        raise click.UsageError("give VALUE (- reads standard input) or --file")
    text = sys.stdin.read() if value == "-" else value
    if not as_json:
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not JSON: {exc}", param_hint="VALUE") from None


def _storing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options set, add and cas share: VALUE and how to read it, --ttl, --max-item, the nodes and CURVE.

    The command gets ``stored`` (the value read) and ``calling()`` (its client, failures mapped to exit codes).
    """

    @functools.wraps(fn)
    def command(
        value: str | None,
        as_json: bool,
        from_file: str | None,
        max_item: str | None,
        nodes: Nodes,
        timeout: float,
        curve: CurveFlags,
        **rest: Any,
    ) -> Any:
        stored = _value(value, as_json, from_file)
        return fn(stored=stored, calling=lambda: _calling(nodes, timeout, curve, max_item), **rest)

    decorated: Callable[..., Any] = command
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("value", required=False),
        click.option("--json", "as_json", is_flag=True, help="VALUE is JSON (stored as a number, list, ...)."),
        click.option("--file", "from_file", type=click.Path(exists=True, dir_okay=False), help="Store its bytes."),
        _TTL,
        _MAX_ITEM,
        _nodes_options,
        _TIMEOUT,
        curve_options("client"),
    ]
    for option in reversed(options):
        decorated = option(decorated)
    return _with_codes(decorated)


@cache.command()
@click.argument("key")
@_client_command
def get(key: str, nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Print the value of KEY."""
    missing: Value = cast("Value", object())
    with _calling(nodes, timeout, curve) as client:
        value = client.get(key, missing)
    if value is missing:
        raise _Missing(f"{key!r} not found")
    click.echo(_show(value))


@cache.command()
@click.argument("key")
@_client_command
def gets(key: str, nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Print KEY's cas token and value (TOKEN<TAB>VALUE), for `zmqkit cache cas`."""
    with _calling(nodes, timeout, curve) as client:
        value, token = client.gets(key)
    if token is None:
        raise _Missing(f"{key!r} not found")
    click.echo(f"{token}\t{_show(value)}")


_Calling = Callable[[], contextlib.AbstractContextManager[CacheClient]]


@cache.command("set")
@click.argument("key")
@_storing
def set_(key: str, stored: Any, ttl: int, calling: _Calling) -> None:
    """Store VALUE (text; - reads standard input; JSON with --json; a file's bytes with --file) under KEY.

    Standard input is stored byte for byte: `echo` adds a newline, `printf` does not.
    """
    with calling() as client:
        client.set(key, stored, ttl=ttl)
    click.echo("stored")


@cache.command()
@click.argument("key")
@_storing
def add(key: str, stored: Any, ttl: int, calling: _Calling) -> None:
    """Store VALUE under KEY only if KEY is not there yet."""
    with calling() as client:
        if not client.add(key, stored, ttl=ttl):
            raise _Missing(f"{key!r} is already there; nothing stored")
    click.echo("stored")


@cache.command()
@click.argument("key")
@click.argument("token", type=click.IntRange(min=0))
@_storing
def cas(key: str, token: int, stored: Any, ttl: int, calling: _Calling) -> None:
    """Store VALUE under KEY if it is unchanged since `zmqkit cache gets` printed TOKEN."""
    with calling() as client:
        outcome = client.cas(key, stored, token, ttl=ttl)
    if outcome is None:
        raise _Missing(f"{key!r} not found")
    if not outcome:
        raise _Missing(f"{key!r} changed since token {token}; nothing stored")
    click.echo("stored")


def _counter(name: str, word: str) -> None:
    def command(key: str, delta: int, nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
        with _calling(nodes, timeout, curve) as client:
            value = getattr(client, name)(key, delta)
        if value is None:
            raise _Missing(f"{key!r} not found")
        click.echo(value)

    # The help is set before click reads it (at decoration), not after.
    command.__doc__ = f"{word} KEY's stored decimal number by DELTA (default 1) and print the new value."
    decorated = _client_command(command)
    decorated = click.argument("delta", default=1, type=click.IntRange(min=0))(decorated)
    decorated = click.argument("key")(decorated)
    cache.command(name)(decorated)


_counter("incr", "Increase")
_counter("decr", "Decrease (stopping at 0)")


@cache.command()
@click.argument("key")
@click.argument("ttl", type=float)
@_client_command
def touch(key: str, ttl: float, nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Give KEY a new TTL in seconds (0 = until evicted)."""
    with _calling(nodes, timeout, curve) as client:
        if not client.touch(key, ttl):
            raise _Missing(f"{key!r} not found")
    click.echo("touched")


@cache.command()
@click.argument("key")
@_client_command
def delete(key: str, nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Remove KEY."""
    with _calling(nodes, timeout, curve) as client:
        if not client.delete(key):
            raise _Missing(f"{key!r} not found")
    click.echo("deleted")


@cache.command()
@_client_command
def ping(nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Ask every node for its id (it changes when the node restarts), all at once, and time the whole round;
    exit 3 if any does not answer."""
    with _calling(nodes, timeout, curve) as client:
        started = time.perf_counter()
        answers = client.ping()
        elapsed_ms = (time.perf_counter() - started) * 1000
        endpoints = client.endpoints
    for ep in endpoints:
        if ep in answers:
            click.echo(f"{ep}  id {answers[ep].hex()}")
        else:
            click.echo(f"{ep}  not answering", err=True)
    click.echo(f"{len(answers)} of {len(endpoints)} node(s) answered in {elapsed_ms:.2f} ms (one round to all)")
    if len(answers) < len(endpoints):
        raise _Unreachable(f"{len(endpoints) - len(answers)} of {len(endpoints)} node(s) did not answer")


def _stats_table(per_node: dict[str, dict[str, int]], endpoints: list[str]) -> list[str]:
    answered = [ep for ep in endpoints if ep in per_node]
    names = list(dict.fromkeys(n for ep in answered for n in per_node[ep]))
    width = max(len(n) for n in names) + 2
    col = max(len(ep) for ep in answered) + 2
    lines = [f"{'':{width}}" + "".join(f"{ep:>{col}}" for ep in answered) + f"{'total':>14}"]
    for name in names:
        values = [per_node[ep].get(name, 0) for ep in answered]
        # Sizes and counts add up across nodes (limit_maxbytes is the cluster's capacity); these do not.
        total = max(values) if name in ("max_item_size", "uptime") else sum(values)
        lines.append(f"{name:{width}}" + "".join(f"{v:>{col}}" for v in values) + f"{total:>14}")
    return lines


def _watch_table(now: dict[str, dict[str, int]], before: dict[str, dict[str, int]], seconds: float) -> list[str]:
    """One line per node: hit ratio and ops/s over the last interval, items, bytes, evictions."""
    lines = [f"{'node':<28}{'hit %':>8}{'ops/s':>10}{'items':>10}{'bytes':>14}{'evictions':>11}"]
    for ep, stats in now.items():
        old = before.get(ep, stats)
        hits = stats.get("get_hits", 0) - old.get("get_hits", 0)
        misses = stats.get("get_misses", 0) - old.get("get_misses", 0)
        ops = sum(v - old.get(k, 0) for k, v in stats.items() if k.startswith("cmd_"))
        ratio = f"{100 * hits / (hits + misses):.1f}" if hits + misses else "-"
        lines.append(
            f"{ep:<28}{ratio:>8}{ops / seconds:>10.0f}{stats.get('items', 0):>10}{stats.get('bytes', 0):>14}"
            f"{stats.get('evictions', 0):>11}"
        )
    return lines


@cache.command()
@_nodes_options
@_TIMEOUT
@click.option("--watch", type=click.FloatRange(min=0.1), help="Redraw every SECONDS: hit %, ops/s, items, bytes.")
@click.option("--samples", default=0, type=click.IntRange(min=0), help="With --watch: stop after N (0: Ctrl-C).")
@curve_options("client")
def stats(nodes: Nodes, timeout: float, watch: float | None, samples: int, curve: CurveFlags) -> None:
    """A table of each node's counters and their total; with --watch, a live view per node."""
    with _calling(nodes, timeout, curve) as client:
        endpoints = client.endpoints
        per_node = client.stats()
        if watch is None:
            if not per_node:
                raise _Unreachable(f"no node answered: {', '.join(endpoints)}")
            for line in _stats_table(per_node, endpoints):
                click.echo(line)
            for ep in endpoints:
                if ep not in per_node:
                    click.echo(f"{ep}: not answering", err=True)
            return
        shown = 0
        with stop_signals() as stop:
            while not samples or shown < samples:
                if stop.wait(watch):
                    break
                before, per_node = per_node, client.stats()
                click.clear()
                click.echo(f"zmqkit cache stats, every {watch:g}s (Ctrl-C to stop)")
                for line in _watch_table(per_node, before, watch):
                    click.echo(line)
                for ep in endpoints:
                    if ep not in per_node:
                        click.echo(f"{ep:<28}not answering")
                shown += 1


@cache.command()
@_nodes_options
@_TIMEOUT
@curve_options("client")
def flush(nodes: Nodes, timeout: float, curve: CurveFlags) -> None:
    """Empty every node."""
    with _calling(nodes, timeout, curve) as client:
        answered = client.flush_all()
        total = len(client.endpoints)
    if answered < total:
        raise click.ClickException(f"flushed {answered} of {total} nodes; the others did not answer")
    click.echo(f"flushed {answered} node(s)")


@bench.command("cache")
@click.option(
    "--ops", default=3000, show_default=True, type=click.IntRange(min=1), help="Operations per single-key measurement."
)
@click.option("--vs-memcached", is_flag=True, help="Also run pymemcache against local memcached servers.")
@click.option("--memory-test", is_flag=True, help="Fill a --memory 64M node ten times over and report its RSS.")
@click.option(
    "--rounds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Interleaved latency rounds; the median of each is shown.",
)
def bench_cache(ops: int, vs_memcached: bool, memory_test: bool, rounds: int) -> None:
    """Cache latency and throughput beside raw pyzmq (and memcached), on local nodes."""
    from .bench import run_bench

    run_bench(ops, vs_memcached=vs_memcached, memory_test=memory_test, rounds=rounds)
