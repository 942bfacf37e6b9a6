"""The ``zmqkit`` command: a click group; each capability adds its commands from its own module."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ._version import __version__
from .errors import ZmqkitError
from .security import ALLOW_ANY, Curve, generate_keys

__all__ = [
    "main",
    "bench",
    "ZmqkitGroup",
    "stop_signals",
    "wait_until_stopped",
    "CurveFlags",
    "curve_options",
    "MetricsFlags",
    "metrics_options",
    "DiscoveryFlags",
    "discovery_options",
    "import_object",
]


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


@dataclass(frozen=True)
class CurveFlags:
    """What ``--curve-secret``, ``--curve-server`` and ``--curve-allow`` (or ``ZMQKIT_CURVE_*``) asked for."""

    secret: str | None = None
    server: str | None = None
    allow: tuple[str, ...] = ()
    from_env: frozenset[str] = frozenset()  # which of secret/server/allow came from the environment

    def for_server(self) -> Curve | None:
        """The ``Curve`` of a side that serves (binds): None without a secret key."""
        self._not_for("server", "clients (the connecting side)")
        if self.secret is None:
            if self.allow and "allow" not in self.from_env:
                raise click.UsageError("--curve-allow needs --curve-secret (this side's key pair)")
            return None
        return Curve.server(self.secret, allow=list(self.allow) if self.allow else ALLOW_ANY)

    def for_client(self) -> Curve | None:
        """The ``Curve`` of a side that connects: None without the server's key; a fresh pair without a secret."""
        self._not_for("allow", "servers (the side that binds)")
        if self.server is None:
            if self.secret is not None and "secret" not in self.from_env:
                raise click.UsageError("--curve-secret on a client needs --curve-server (the server's public key)")
            return None
        return Curve.client(self.server, self.secret)

    def for_side(self, serving: bool) -> Curve | None:
        return self.for_server() if serving else self.for_client()

    def _not_for(self, name: str, who: str) -> None:
        # From the command line a misplaced option is a mistake; from the environment (shared by every command
        # run in that shell) it is just not this side's.
        if getattr(self, name) and name not in self.from_env:
            raise click.UsageError(f"--curve-{name} is for {who}; this command is not one here")


_CURVE_HELP = {
    "server": "This command binds, so it is the CURVE server. ",
    "client": "This command connects, so it is a CURVE client. ",
    "bind": "Binding its endpoint, this command is the CURVE server (--curve-secret, --curve-allow); connecting,"
    " a client (--curve-server, optional --curve-secret). ",
}


def curve_options(side: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--curve-secret``, ``--curve-server`` and ``--curve-allow`` (with their ``ZMQKIT_CURVE_*`` variables)
    to a command, which then gets ``curve: CurveFlags`` instead; ``side`` is "server", "client" or "bind"
    (which one depends on the command's --bind), only for the help text."""
    lead = _CURVE_HELP[side]
    options = [
        click.option(
            "--curve-secret",
            envvar="ZMQKIT_CURVE_SECRET",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help=lead + "This side's secret key file (NAME.key_secret from `zmqkit keys generate`); a server needs"
            " it to use CURVE, a client without it makes a fresh key pair.",
        ),
        click.option(
            "--curve-server",
            envvar="ZMQKIT_CURVE_SERVER",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="Clients: the server's public key file (NAME.key); turns CURVE on.",
        ),
        click.option(
            "--curve-allow",
            envvar="ZMQKIT_CURVE_ALLOW",
            show_envvar=True,
            multiple=True,
            type=click.Path(exists=True),
            help="Servers, repeatable: a client's public key file, or a folder of them (the variable: paths"
            f" separated by {os.pathsep!r}). Without it any client with a valid CURVE handshake is let in.",
        ),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            ctx = click.get_current_context()
            from_env = frozenset(
                name
                for name in ("secret", "server", "allow")
                if ctx.get_parameter_source(f"curve_{name}") is ParameterSource.ENVIRONMENT
            )
            flags = CurveFlags(
                kwargs.pop("curve_secret"), kwargs.pop("curve_server"), tuple(kwargs.pop("curve_allow")), from_env
            )
            return fn(curve=flags, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@dataclass(frozen=True)
class MetricsFlags:
    """What ``--metrics-port`` and ``--metrics-bind`` asked for."""

    port: int | None = None
    bind: str = "0.0.0.0"

    @contextlib.contextmanager
    def serving(self, *objects: Any, service: str = "") -> Iterator[None]:
        """Within the block, Prometheus metrics for ``objects`` on the asked port (nothing without one)."""
        if self.port is None:
            yield
            return
        from .metrics import serve_metrics

        with serve_metrics(*objects, port=self.port, bind=self.bind, service=service) as server:
            click.echo(f"metrics on {server.url}", err=True)
            yield


def metrics_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--metrics-port`` / ``--metrics-bind`` (also ``ZMQKIT_METRICS_PORT``); pass ``metrics=MetricsFlags``."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        flags = MetricsFlags(kwargs.pop("metrics_port"), kwargs.pop("metrics_bind"))
        return fn(metrics=flags, **kwargs)

    command = click.option(
        "--metrics-bind",
        default="0.0.0.0",
        show_default=True,
        help="Address the metrics endpoint listens on.",
    )(command)
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        envvar="ZMQKIT_METRICS_PORT",
        show_envvar=True,
        help="Serve Prometheus metrics (GET /metrics) on this port; needs the metrics extra (prometheus_client).",
    )(command)


@dataclass(frozen=True)
class DiscoveryFlags:
    """What ``--service``/``--announce``, ``--fabric``, ``--advertise`` and ``--fabric-curve-server`` asked for."""

    name: str | None = None  # the service to find (--service) or to announce (--announce)
    fabric: str | None = None
    advertise: str | None = None
    fabric_curve_server: str | None = None

    @property
    def wanted(self) -> bool:
        """Whether the command should find or announce a service at all."""
        return self.name is not None

    @contextlib.contextmanager
    def joined(self, secret: str | None = None) -> Iterator[Any]:
        """Within the block, the command's ``Fabric`` (None when no service was named); ``secret`` is this
        side's key pair for a CURVE fabric (a fresh pair without it)."""
        if self.name is None:
            if self.fabric_curve_server is not None:
                raise click.UsageError("--fabric-curve-server needs --service or --announce")
            yield None
            return
        from zmqkit.patterns.presence.fabric import Fabric

        curve = Curve.client(self.fabric_curve_server, secret) if self.fabric_curve_server is not None else None
        with Fabric(self.fabric, curve=curve) as fabric:
            yield fabric


def discovery_options(side: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the discovery options to a command, which then gets ``discovery: DiscoveryFlags``: ``side`` "find"
    adds ``--service NAME``, "announce" adds ``--announce NAME`` and ``--advertise``; both add ``--fabric``
    (``ZMQKIT_FABRIC``) and ``--fabric-curve-server`` (``ZMQKIT_FABRIC_CURVE_SERVER``)."""
    if side == "find":
        named = click.option("--service", "discovery_name", help="Find the service's instances on the fabric.")
    else:
        named = click.option("--announce", "discovery_name", help="Announce this service name on the fabric.")
    options = [
        named,
        click.option(
            "--fabric",
            "discovery_fabric",
            envvar="ZMQKIT_FABRIC",
            show_envvar=True,
            help="Fabric servers, comma-separated (`zmqkit fabric`).",
        ),
        click.option(
            "--fabric-curve-server",
            "discovery_curve",
            envvar="ZMQKIT_FABRIC_CURVE_SERVER",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="The fabric servers' public key file: joins the fabric with CURVE (this side's key: --curve-secret).",
        ),
    ]
    if side == "announce":
        options.append(
            click.option("--advertise", "discovery_advertise", help="The endpoint to announce, when not the bound one.")
        )

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            flags = DiscoveryFlags(
                kwargs.pop("discovery_name"),
                kwargs.pop("discovery_fabric"),
                kwargs.pop("discovery_advertise", None),
                kwargs.pop("discovery_curve"),
            )
            return fn(discovery=flags, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def import_object(spec: str, what: str = "MODULE:NAME") -> Any:
    """The object ``module:attribute`` names (as celery and gunicorn take them), importable from the current folder."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter(f"{spec!r}: expected {what}, e.g. myapp.tasks:send_email", param_hint=what)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint=what) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(f"{module_name!r} has no {attribute!r}", param_hint=what) from None
    return target


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
@click.option("--force", is_flag=True, help="Replace an existing NAME key pair (peers trusting it are locked out).")
def keys_generate(name: str, directory: str, force: bool) -> None:
    """Write a new key pair NAME.key (public, share it) and NAME.key_secret (keep it); an existing pair is kept
    unless --force."""
    folder = Path(directory)
    new_folder = not folder.exists()
    public, secret = generate_keys(name, folder, force=force)
    if new_folder:
        click.echo(f"created folder {folder}")
    click.echo(f"public key: {public}")
    click.echo(f"secret key: {secret}")


@main.group(cls=ZmqkitGroup)
def bench() -> None:
    """Benchmarks: each puts raw pyzmq, measured in the same run, beside zmqkit."""


from zmqkit.cache import cli as _cache_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns.fanout import cli as _fanout_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns.pipeline import cli as _pipeline_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns.presence import cli as _presence_cli  # noqa: E402,F401  (registers commands)
from zmqkit.patterns.reqrep import cli as _reqrep_cli  # noqa: E402,F401  (registers commands)
