"""``zmqkit req``, ``rep``, ``rpc``, ``proxy`` and ``bench reqrep``: request-reply from the command line."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from typing import Any

import click

from zmqkit.bench import RawReqRep, Row, median_of, print_table, raw_dealer, spawn, take_turns
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

from .aio import AsyncClient
from .rpc import RpcClient, RpcServer
from .sync import Client, Proxy, Server

__all__ = ["req", "rep", "rpc", "rpc_call", "rpc_serve", "proxy", "bench_reqrep"]


def _found_by_service(
    endpoint: str | None, rest: tuple[str, ...], discovery: DiscoveryFlags
) -> tuple[str | None, tuple[str, ...]]:
    """The endpoint and the arguments after it: with ``--service`` the first argument is not an endpoint."""
    if not discovery.wanted:
        if endpoint is None:
            raise click.UsageError("give ENDPOINT, or --service NAME --fabric F")
        return endpoint, rest
    if endpoint is None:
        return None, rest
    if "://" in endpoint:
        raise click.UsageError(f"give ENDPOINT ({endpoint!r}) or --service {discovery.name!r}, not both")
    return None, (endpoint, *rest)


@main.command()
@click.argument("endpoint", required=False)
@click.argument("message", required=False)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the reply.")
@click.option("--retries", default=2, show_default=True, help="Retries (on another server) after a timeout.")
@curve_options("client")
@discovery_options("find")
def req(
    endpoint: str | None,
    message: str | None,
    timeout: float,
    retries: int,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
) -> None:
    """Send MESSAGE to the server(s) at ENDPOINT (comma-separated for many) and print the reply.

    With --service NAME --fabric F instead of ENDPOINT: to the instances of NAME announced on the fabric.
    """
    endpoint, rest = _found_by_service(endpoint, (message,) if message is not None else (), discovery)
    if len(rest) != 1:
        raise click.UsageError("give MESSAGE (after ENDPOINT, or alone with --service)")
    with (
        discovery.joined(curve.secret) as fabric,
        Client(
            endpoint, service=discovery.name, fabric=fabric, timeout=timeout, retries=retries, curve=curve.for_client()
        ) as client,
    ):
        reply = client.request(rest[0].encode())
    click.echo(reply.decode(errors="replace") if isinstance(reply, bytes) else json.dumps(reply))


@main.command()
@click.argument("endpoint")
@click.option("--echo", is_flag=True, help="Answer every request with its own body (the default, and only, mode).")
@click.option("--concurrency", default=1, show_default=True, help="Handler threads.")
@click.option("--connect", is_flag=True, help="Connect to ENDPOINT (a proxy's backend) instead of binding it.")
@curve_options("bind")
@discovery_options("announce")
@metrics_options
def rep(
    endpoint: str,
    echo: bool,
    concurrency: int,
    connect: bool,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
    metrics: MetricsFlags,
) -> None:
    """Serve requests on ENDPOINT: an echo server (Ctrl-C or SIGTERM leaves gracefully).

    CURVE: binding, this is the server; with --connect (to a proxy), a client of the proxy's backend. With
    --announce NAME --fabric F it is announced as an instance of NAME (maintenance when it leaves, down when gone).
    """
    if connect and discovery.wanted:
        raise click.UsageError("--announce needs a bound ENDPOINT, not --connect")
    with stop_signals() as stop, discovery.joined(curve.secret) as fabric:
        server = Server(
            None if connect else endpoint,
            lambda body: body,
            concurrency=concurrency,
            connect=endpoint if connect else (),
            announce=discovery.name,
            fabric=fabric,
            advertise=discovery.advertise,
            curve=curve.for_side(serving=not connect),
        )
        server.start()
        click.echo(f"echoing on {', '.join(server.endpoints) or endpoint}", err=True)
        with metrics.serving(server, service=discovery.name or "echo"):
            wait_until_stopped(stop)
        click.echo("leaving...", err=True)
        server.leave()


class _RpcGroup(ZmqkitGroup):
    """``zmqkit rpc serve ...`` and ``zmqkit rpc call ...``; ``zmqkit rpc ENDPOINT ...`` is short for ``call``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and (not args[0].startswith("-") or args[0].startswith("--service")):
            args = ["call", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_RpcGroup)
def rpc() -> None:
    """RPC from the shell: serve an object's methods, or call a server's (``zmqkit rpc ENDPOINT ...`` calls)."""


def _argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _arguments(texts: tuple[str, ...]) -> tuple[list[Any], dict[str, Any]]:
    """Positional values, and ``name=VALUE`` keyword values; each VALUE is JSON, else a plain string."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = _argument(value)
        elif kwargs:
            raise click.UsageError(f"positional argument {text!r} after keyword arguments")
        else:
            args.append(_argument(text))
    return args, kwargs


@rpc.command("call")
@click.argument("endpoint", required=False)
@click.argument("method", required=False)
@click.argument("args", nargs=-1)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the reply.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer (or the method list) as JSON.")
@curve_options("client")
@discovery_options("find")
def rpc_call(
    endpoint: str | None,
    method: str | None,
    args: tuple[str, ...],
    timeout: float,
    as_json: bool,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
) -> None:
    """Call METHOD on ENDPOINT (comma-separate several servers); without METHOD, list its methods.

    Each ARG is JSON, else a plain string; ``name=VALUE`` passes a keyword argument (a positional string with
    an ``=`` in it is passed as JSON: '"a=b"'). With --service NAME --fabric F instead of ENDPOINT: the
    instances of NAME announced on the fabric (``zmqkit rpc call --service NAME METHOD ARGS...``).
    """
    endpoint, rest = _found_by_service(endpoint, (method, *args) if method is not None else args, discovery)
    method, args = (rest[0], rest[1:]) if rest else (None, ())
    with (
        discovery.joined(curve.secret) as fabric,
        RpcClient(endpoint, service=discovery.name, fabric=fabric, timeout=timeout, curve=curve.for_client()) as client,
    ):
        if method is None:
            methods = client.methods()
            if as_json:
                click.echo(json.dumps(methods, indent=2, sort_keys=True))
                return
            for name, info in sorted(methods.items()):
                click.echo(f"{name}{info.get('signature', '')}  {info.get('doc', '')}".rstrip())
            return
        values, keywords = _arguments(args)
        answer = client.call(method, *values, **keywords)
    click.echo(answer if isinstance(answer, str) and not as_json else json.dumps(answer))


@rpc.command("serve")
@click.argument("target")
@click.option("--bind", "binds", multiple=True, required=True, help="Endpoint to serve on (repeatable).")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1), help="Calls at once.")
@click.option("--prefix", default="", help="Serve each method as PREFIX + name.")
@click.option("--codec", default="json", show_default=True, type=click.Choice(["json", "msgpack"]))
@curve_options("server")
@discovery_options("announce")
@metrics_options
def rpc_serve(
    target: str,
    binds: tuple[str, ...],
    concurrency: int,
    prefix: str,
    codec: str,
    curve: CurveFlags,
    discovery: DiscoveryFlags,
    metrics: MetricsFlags,
) -> None:
    """Serve the public methods of TARGET (MODULE:OBJECT, importable from here) until Ctrl-C or SIGTERM.

    OBJECT may be an instance, a class (made with no arguments) or a module; its public callables become
    methods (``zmqkit rpc ENDPOINT`` lists them). Ctrl-C or SIGTERM leaves gracefully: calls in hand finish.
    With --announce NAME --fabric F the server is announced as an instance of NAME while it serves.
    """
    obj = import_object(target, "MODULE:OBJECT")
    if isinstance(obj, type):
        obj = obj()
    with stop_signals() as stop, discovery.joined(curve.secret) as fabric:
        server = RpcServer(
            list(binds),
            concurrency=concurrency,
            codec=codec,
            announce=discovery.name,
            fabric=fabric,
            advertise=discovery.advertise,
            curve=curve.for_server(),
        )
        names = server.register(obj, prefix=prefix)
        if not names:
            server.close()
            raise click.BadParameter(f"{target!r} has no public methods to serve", param_hint="TARGET")
        server.start()
        click.echo(f"serving {target} ({', '.join(names)}) on {', '.join(server.endpoints)}", err=True)
        with metrics.serving(server, service=discovery.name or target):
            wait_until_stopped(stop)
        click.echo("leaving...", err=True)
        server.leave()


@main.command()
@click.option("--frontend", required=True, help="Endpoint clients connect to (ROUTER).")
@click.option("--backend", required=True, help="Endpoint servers connect to (DEALER).")
@curve_options("server")
@metrics_options
def proxy(frontend: str, backend: str, curve: CurveFlags, metrics: MetricsFlags) -> None:
    """A queue device between clients and servers, so clients know one address.

    CURVE: the proxy binds both sides, so it is the CURVE server to clients and servers alike: both connect with
    --curve-server set to the proxy's public key, and --curve-allow (if given) must list both.
    """
    with (
        stop_signals() as stop,
        Proxy(frontend, backend, curve=curve.for_server()) as device,
        metrics.serving(device, service="proxy"),
    ):
        click.echo(f"proxy: clients -> {device.frontend}, servers -> {device.backend}", err=True)
        wait_until_stopped(stop)


def _echo_server(endpoints: Any) -> None:
    """Bench peer: a zmqkit echo server in its own process; sends its endpoint back, runs until killed."""
    with Server("tcp://127.0.0.1:0", lambda body: body) as server:
        endpoints.put(server.endpoints[0])
        server.wait()


async def _pipelined(endpoint: str, n: int, body: bytes, window: int) -> float:
    async with AsyncClient(endpoint) as client:
        await client.request(body)
        left = iter(range(n))

        async def lane() -> None:
            for _ in left:
                await client.request(body)

        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(window)))
        return n / (time.perf_counter() - start)


def _timed(requests: int, measure: Any, *args: Any) -> tuple[float, float]:
    """``measure(*args)`` and the CPU seconds this process (every thread, libzmq's too) spent per request."""
    start = time.process_time()
    figure = measure(*args)
    return figure, (time.process_time() - start) / requests


@bench.command("reqrep")
@click.option(
    "-n", "count", default=10_000, show_default=True, type=click.IntRange(min=1), help="Requests per measurement."
)
@click.option("--size", default=100, show_default=True, type=click.IntRange(min=0), help="Body size in bytes.")
@click.option(
    "--window", default=100, show_default=True, type=click.IntRange(min=1), help="Requests in flight when pipelined."
)
@click.option(
    "--rounds", default=5, show_default=True, type=click.IntRange(min=1), help="Interleaved rounds; medians shown."
)
def bench_reqrep(count: int, size: int, window: int, rounds: int) -> None:
    """Round trip and pipelined rate of zmqkit request-reply beside raw pyzmq REQ/REP and DEALER.

    zmqkit and raw pyzmq take turns, so a noisy neighbour hits both alike: round trips in short slices, six per
    round, against a raw echo and a zmqkit server that both stay up; pipelined runs round after round. Each
    figure is the median (a best-of rewards luck, and luck differs between runs). The client's CPU time per
    request is shown too: on a busy machine it varies less than the wall-clock figures.
    """
    endpoints = mp.get_context("spawn").Queue()
    proc = spawn(_echo_server, endpoints)
    piped, raw_piped = [], []
    load = os.getloadavg()[0]
    try:
        endpoint = endpoints.get(timeout=30)
        body = b"x" * size
        with Client(endpoint) as client, RawReqRep(size) as raw:
            client.request(body)
            turns = take_turns(
                {"raw": raw, "zmqkit": lambda n: [client.request(body) for _ in range(n)]}, count, rounds
            )
        for _ in range(max(1, rounds)):
            piped.append(_timed(count, lambda: asyncio.run(_pipelined(endpoint, count, body, window))))
            raw_piped.append(_timed(count, raw_dealer, count, size, window))
    finally:
        proc.terminate()
        proc.join(10)
    print_table(
        f"request-reply, {size}-byte bodies, server in another process, tcp loopback, medians of"
        f" {len(turns['raw'])} round-trip slices and {len(piped)} pipelined rounds"
        f" (load average {load:.1f} -> {os.getloadavg()[0]:.1f})",
        [
            Row(
                "sync round trip (REQ/REP)",
                median_of(turns["zmqkit"]),
                "s",
                median_of(turns["raw"]),
                "<= 1.15x",
                samples=len(turns["zmqkit"]),
            ),
            Row(
                f"async pipelined, {window} in flight",
                median_of(piped, 0),
                "req/s",
                median_of(raw_piped, 0),
                ">= 0.70x",
                samples=len(piped),
            ),
            Row("  client CPU per request, sync", median_of(turns["zmqkit"], 1), "s", median_of(turns["raw"], 1)),
            Row("  client CPU per request, pipelined", median_of(piped, 1), "s", median_of(raw_piped, 1)),
        ],
    )
