"""The ``zmqkit`` command: a click group; each capability adds its commands from its own module."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from ._version import __version__
from .errors import ZmqkitError
from .security import generate_keys

__all__ = ["main", "bench", "ZmqkitGroup", "wait_until_stopped"]


class ZmqkitGroup(click.Group):
    """A group that ends a ZmqkitError or Ctrl-C with one clear line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZmqkitError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def wait_until_stopped(done: threading.Event | None = None) -> None:
    """Block a long-running command until Ctrl-C, SIGTERM or ``done`` is set; signal handlers are restored after.

    Both signals just set an event, so the command shuts down in order (a service manager's SIGTERM is as clean
    as Ctrl-C) instead of unwinding from wherever KeyboardInterrupt happened to land.
    """
    stop = done or threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@click.group(cls=ZmqkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="zmqkit")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="How much zmqkit logs to stderr.",
)
def main(log_level: str) -> None:
    """zmqkit: brokerless work queues, fanout, request-reply and a shared cache on ZeroMQ."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group(cls=ZmqkitGroup)
def keys() -> None:
    """CURVE key pairs (zmq.auth certificate files)."""


@keys.command("generate")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder to write NAME.key and NAME.key_secret into.",
)
def keys_generate(name: str, directory: str) -> None:
    """Write a new key pair NAME.key (public, share it) and NAME.key_secret (keep it)."""
    public, secret = generate_keys(name, directory)
    click.echo(f"public key: {public}")
    click.echo(f"secret key: {secret}")


@main.group(cls=ZmqkitGroup)
def bench() -> None:
    """Benchmarks: each puts raw pyzmq, measured in the same run, beside zmqkit."""


from zmqkit.cache import cli as _cache_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns import fanout_cli as _fanout_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns import pipeline_cli as _pipeline_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns import reqrep_cli as _reqrep_cli  # noqa: E402,F401  (registers commands)
