"""The ``zmqkit cache`` commands (serve, get, set, delete, stats, flush) and ``zmqkit bench cache``.

zmqkit cache serve --nodes 3                  # three nodes on tcp://127.0.0.1:11311..11313
zmqkit cache set greeting hello --nodes 3     # --nodes N means those N local nodes
zmqkit cache get greeting --nodes tcp://10.0.0.1:11311,tcp://10.0.0.2:11311
"""

from __future__ import annotations

import json
from typing import Any, cast

import click

from zmqkit.cli import CurveFlags, ZmqkitGroup, bench, curve_options, main, stop_signals, wait_until_stopped
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


_NODES = click.option(
    "--nodes",
    default="1",
    envvar="ZMQKIT_CACHE_NODES",
    show_default=True,
    help="Cache nodes: comma-separated endpoints, or N for N local nodes from tcp://127.0.0.1:11311.",
)
_TIMEOUT = click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for a node.")


def _client(nodes: str, timeout: float, curve: CurveFlags) -> CacheClient:
    return CacheClient(node_endpoints(nodes), timeout=timeout, retries=0, curve=curve.for_client())


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
@curve_options("server")
def serve(bind: str, count: int, memory: str, max_item: str, curve: CurveFlags) -> None:
    """Run cache nodes until Ctrl-C or SIGTERM (with --nodes N, all N serve with the same CURVE key)."""
    endpoints = node_endpoints(str(count), bind)
    security = curve.for_server()
    nodes = [CacheNode(ep, memory=memory, max_item=max_item, curve=security) for ep in endpoints]
    with stop_signals() as stop:
        try:
            for node in nodes:
                click.echo(f"cache node listening on {node.start()} (memory {memory}, max item {max_item})")
            click.echo(f"{len(nodes)} node(s) ready; Ctrl-C to stop", err=True)
            wait_until_stopped(stop)
            click.echo("stopping", err=True)
        finally:
            for node in nodes:
                node.stop()


EXIT_MISSING, EXIT_UNREACHABLE, EXIT_ERROR = 1, 3, 4  # `cache get`'s exit codes (2 is click's usage error)


class _Missing(click.ClickException):
    exit_code = EXIT_MISSING


class _Unreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


class _Failed(click.ClickException):
    exit_code = EXIT_ERROR


@cache.command()
@click.argument("key")
@_NODES
@_TIMEOUT
@curve_options("client")
def get(key: str, nodes: str, timeout: float, curve: CurveFlags) -> None:
    """Print the value of KEY.

    \b
    Exit codes:
      0  found (the value is printed)
      1  KEY is not there
      2  bad usage
      3  no node answered (unreachable, or timed out)
      4  any other error (authentication refused, bad key, refused by a node)
    """
    missing: Value = cast("Value", object())
    try:
        with _client(nodes, timeout, curve) as client:
            value = client.get(key, missing)
    except (Unavailable, RequestTimeout) as exc:
        raise _Unreachable(str(exc)) from None
    except ZmqkitError as exc:
        raise _Failed(str(exc)) from None
    if value is missing:
        raise _Missing(f"{key!r} not found")
    click.echo(_show(value))


@cache.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--ttl", default=0, show_default=True, help="Seconds to keep it (0 = until evicted).")
@click.option("--json", "as_json", is_flag=True, help="VALUE is JSON (stored as a number, list, ...).")
@_NODES
@_TIMEOUT
@curve_options("client")
def set_(key: str, value: str, ttl: int, as_json: bool, nodes: str, timeout: float, curve: CurveFlags) -> None:
    """Store VALUE (text, or JSON with --json) under KEY."""
    if as_json:
        try:
            parsed: Any = json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} is not JSON: {exc}", param_hint="VALUE") from None
    else:
        parsed = value
    with _client(nodes, timeout, curve) as client:
        client.set(key, parsed, ttl=ttl)
    click.echo("stored")


@cache.command()
@click.argument("key")
@_NODES
@_TIMEOUT
@curve_options("client")
def delete(key: str, nodes: str, timeout: float, curve: CurveFlags) -> None:
    """Remove KEY (exit 1 if it was not there)."""
    with _client(nodes, timeout, curve) as client:
        if not client.delete(key):
            raise click.ClickException(f"{key!r} not found")
    click.echo("deleted")


@cache.command()
@_NODES
@_TIMEOUT
@curve_options("client")
def stats(nodes: str, timeout: float, curve: CurveFlags) -> None:
    """A table of each node's counters, and their total."""
    with _client(nodes, timeout, curve) as client:
        per_node = client.stats()
        endpoints = client.endpoints
    if not per_node:
        raise click.ClickException(f"no node answered: {', '.join(endpoints)}")
    answered = [ep for ep in endpoints if ep in per_node]
    names = list(dict.fromkeys(n for ep in answered for n in per_node[ep]))
    width = max(len(n) for n in names) + 2
    col = max(len(ep) for ep in answered) + 2
    click.echo(f"{'':{width}}" + "".join(f"{ep:>{col}}" for ep in answered) + f"{'total':>14}")
    for name in names:
        values = [per_node[ep].get(name, 0) for ep in answered]
        # Sizes and counts add up across nodes (limit_maxbytes is the cluster's capacity); these do not.
        total = max(values) if name in ("max_item_size", "uptime") else sum(values)
        click.echo(f"{name:{width}}" + "".join(f"{v:>{col}}" for v in values) + f"{total:>14}")
    for ep in endpoints:
        if ep not in per_node:
            click.echo(f"{ep}: not answering", err=True)


@cache.command()
@_NODES
@_TIMEOUT
@curve_options("client")
def flush(nodes: str, timeout: float, curve: CurveFlags) -> None:
    """Empty every node."""
    with _client(nodes, timeout, curve) as client:
        answered = client.flush_all()
        total = len(client.endpoints)
    if answered < total:
        raise click.ClickException(f"flushed {answered} of {total} nodes; the others did not answer")
    click.echo(f"flushed {answered} node(s)")


@bench.command("cache")
@click.option("--ops", default=3000, show_default=True, help="Operations per single-key measurement.")
@click.option("--vs-memcached", is_flag=True, help="Also run pymemcache against local memcached servers.")
@click.option("--memory-test", is_flag=True, help="Fill a --memory 64M node ten times over and report its RSS.")
@click.option("--rounds", default=5, show_default=True, help="Interleaved latency rounds; the median of each is shown.")
def bench_cache(ops: int, vs_memcached: bool, memory_test: bool, rounds: int) -> None:
    """Cache latency and throughput beside raw pyzmq (and memcached), on local nodes."""
    from .bench import run_bench

    run_bench(ops, vs_memcached=vs_memcached, memory_test=memory_test, rounds=rounds)
