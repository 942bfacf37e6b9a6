"""The ``zmqkit`` command: a click group; each capability adds its commands from its own module."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from ._version import __version__
from .errors import ZmqkitError
from .security import generate_keys

__all__ = ["main", "bench", "ZmqkitGroup", "stop_signals", "wait_until_stopped"]


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


@contextlib.contextmanager
def stop_signals(done: threading.Event | None = None) -> Iterator[threading.Event]:
    """Within the block, Ctrl-C and SIGTERM set the yielded event instead of interrupting; handlers restored after.

    Enter it before a long-running command starts anything, so a signal that arrives early is not lost; then
    shut down in order (a service manager's SIGTERM is as clean as Ctrl-C).
    """
    stop = done or threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def wait_until_stopped(stop: threading.Event) -> None:
    """Block until ``stop`` is set (by :func:`stop_signals` or the command itself)."""
    while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
        pass


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
