"""Discovery commands: ``zmqkit fabric`` (a fabric server) and ``zmqkit services`` (what a fabric knows)."""

from __future__ import annotations

import json

import click

from zmqkit.cli import CurveFlags, MetricsFlags, curve_options, main, metrics_options, stop_signals, wait_until_stopped

from .fabric import ENV_FABRIC, SETTLE, Fabric, FabricServer
from .protocol import Entry

__all__ = ["fabric", "services"]


@main.command()
@click.option("--bind", "binds", multiple=True, default=["tcp://*:5557"], show_default=True, help="Endpoint to bind.")
@click.option(
    "--misses", default=3.0, show_default=True, type=click.FloatRange(min=1), help="Heartbeats an entry may miss."
)
@click.option("--max-entries", default=100_000, show_default=True, type=click.IntRange(min=1), help="Table bound.")
@click.option(
    "--beat",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between the beats that tell members they still hear the fabric.",
)
@click.option(
    "--settle",
    default=SETTLE,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds after the start (or after a silence in which every entry expired) during which snapshots wait"
    " for the members to re-announce.",
)
@curve_options("server")
@metrics_options
def fabric(
    binds: tuple[str, ...],
    misses: float,
    max_entries: int,
    beat: float,
    settle: float,
    curve: CurveFlags,
    metrics: MetricsFlags,
) -> None:
    """Run a fabric server until Ctrl-C or SIGTERM: services announce here, clients find them here.

    Run two or more (on different hosts) and give every member all their addresses: losing one loses nothing.
    With CURVE, only the keys in --curve-allow may announce or look.
    """
    security = curve.for_server()
    with (
        stop_signals() as stop,
        FabricServer(
            list(binds), misses=misses, max_entries=max_entries, beat=beat, settle=settle, curve=security
        ) as server,
        metrics.serving(server, service="fabric"),
    ):
        click.echo(f"fabric on {', '.join(server.endpoints)}", err=True)
        wait_until_stopped(stop)


def _directory_lines(entries: list[Entry], fabric: str, as_json: bool) -> list[str]:
    if as_json:
        return [
            json.dumps({"service": e.service, "status": e.status, "endpoint": e.endpoint, "meta": e.meta})
            for e in entries
        ]
    if not entries:
        return [f"no services announced on {fabric}"]
    rows = [(e.service, e.status, e.endpoint, json.dumps(e.meta) if e.meta else "") for e in entries]
    widths = [max(len(r[i]) for r in [("SERVICE", "STATUS", "ENDPOINT", "META"), *rows]) for i in range(4)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [("SERVICE", "STATUS", "ENDPOINT", "META"), *rows]
    ]


@main.command()
@click.option(
    "--fabric", "fabric_", envvar=ENV_FABRIC, show_envvar=True, required=True, help="Fabric servers, comma-separated."
)
@click.option("--service", help="Only this service (default: all).")
@click.option("--listen", default=5.0, show_default=True, help="Seconds to wait for a fabric server's answer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option("--watch", type=click.FloatRange(min=0.1), help="Keep listening; redraw every SECONDS.")
@click.option("--samples", default=0, type=click.IntRange(min=0), help="With --watch: stop after N (0: Ctrl-C).")
@curve_options("client")
def services(
    fabric_: str,
    service: str | None,
    listen: float,
    as_json: bool,
    watch: float | None,
    samples: int,
    curve: CurveFlags,
) -> None:
    """Print the services announced on a fabric (name, status, endpoint, meta); --watch redraws it."""
    with Fabric(fabric_, curve=curve.for_client()) as member, stop_signals() as stop:
        unwatch = member.watch(service, lambda event, entry: None)
        if not member.wait_synced(listen):
            raise click.ClickException(f"no fabric server answered within {listen:g}s: {fabric_}")
        shown = 0
        try:
            while True:
                if watch is not None:
                    click.clear()
                    click.echo(f"zmqkit services on {fabric_}, every {watch:g}s (Ctrl-C to stop)")
                for line in _directory_lines(member.lookup(service), fabric_, as_json):
                    click.echo(line)
                shown += 1
                if watch is None or (samples and shown >= samples) or stop.wait(watch):
                    return
        finally:
            unwatch()
