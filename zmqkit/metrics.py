"""Prometheus metrics: a collector reads each object's ``stats()`` when scraped, so nothing is added per message.

Needs the ``metrics`` extra (prometheus_client). One call serves them::

    >>> server = serve_metrics(node, port=9100, service="cache")   # GET http://host:9100/metrics
    >>> server.close()

Series are named ``zmqkit_<capability>_<counter>_total`` for counters and ``zmqkit_<capability>_<gauge>`` for
levels (items, bytes, in flight), labelled with ``service``, ``role`` (the class) and ``endpoint``; refused CURVE
handshakes are ``zmqkit_auth_failures_total`` whatever the capability.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .errors import ConfigurationError

__all__ = ["serve_metrics", "MetricsServer", "StatsCollector", "GAUGES", "capability_of"]


class HasStats(Protocol):
    def stats(self) -> Mapping[str, Any]: ...


# Keys of the objects' stats() that are levels, not counts since start.
GAUGES = frozenset(
    {
        "in_flight",
        "queued",
        "retrying",
        "workers",
        "held",
        "items",
        "bytes",
        "limit_maxbytes",
        "max_item_size",
        "uptime",
        "subscribers",
        "cached_topics",
        "leases",
        "dead_kept",
        "entries",
    }
)
# Where a stats() key would make a poor series name: (capability, key) -> name.
_RENAMES = {
    ("cache", "get_hits"): "hits",
    ("cache", "get_misses"): "misses",
    ("cache", "uptime"): "uptime_seconds",
    ("pipeline", "dead"): "dead_letters",
    ("reqrep", "held"): "in_flight",
}
# Counters every capability keeps alike, named without one: zmqkit_auth_failures_total.
_SHARED = frozenset({"auth_failures"})
# The package a class lives in names its capability.
_CAPABILITIES = (
    ("zmqkit.cache", "cache"),
    ("zmqkit.patterns.pipeline", "pipeline"),
    ("zmqkit.patterns.reqrep", "reqrep"),
    ("zmqkit.patterns.fanout", "fanout"),
    ("zmqkit.patterns.presence.fabric", "fabric"),
    ("zmqkit.patterns.presence", "fanout"),
)


def capability_of(obj: object) -> str:
    """``cache``, ``pipeline``, ``reqrep``, ``fanout`` or ``fabric``: the first word of the object's series names."""
    module = type(obj).__module__
    for prefix, capability in _CAPABILITIES:
        if module.startswith(prefix):
            return capability
    raise ConfigurationError(f"no metrics for {obj!r}: expected a zmqkit cache node, pipeline, reqrep or fanout object")


class StatsCollector:
    """A prometheus_client collector over one ``stats()`` callable, read at every scrape."""

    def __init__(self, capability: str, stats: Callable[[], Mapping[str, Any]], labels: Mapping[str, str]) -> None:
        self.capability = capability
        self._stats = stats
        self._labels = dict(labels)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        names, values = list(self._labels), list(self._labels.values())
        for key, value in sorted(self._stats().items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key in _SHARED:
                name = f"zmqkit_{key}"
            else:
                name = f"zmqkit_{self.capability}_{_RENAMES.get((self.capability, key), key)}"
            what = f"{self.capability} {key.replace('_', ' ')} (from stats())"
            family = GaugeMetricFamily if key in GAUGES else CounterMetricFamily
            metric = family(name, what, labels=names)
            metric.add_metric(values, value)
            yield metric


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` from its own registry, in a daemon thread; ``close()`` stops it."""

    def __init__(self, collectors: list[StatsCollector], port: int, bind: str) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise ConfigurationError("metrics need prometheus_client: pip install 'zmqkit[metrics]'") from None
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)
        try:
            self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from None
        self.port = int(self._server.server_port)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/metrics"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(obj: object) -> str:
    """The endpoint label: where clients reach the object (a proxy's frontend, a forwarder's subscriber side)."""
    endpoints = getattr(obj, "endpoints", None)
    if endpoints:
        return ",".join(endpoints)
    for name in ("endpoint", "frontend", "xpub_endpoint"):
        value = getattr(obj, name, None)
        if value:
            return str(value)
    return ""


def serve_metrics(
    *objects: HasStats, port: int, bind: str = "0.0.0.0", service: str = "", endpoint: str = ""
) -> MetricsServer:
    """Serve Prometheus metrics for ``objects`` (each has ``stats()``) on ``bind:port`` (port 0: a free one)."""
    if not objects:
        raise ConfigurationError("serve_metrics needs at least one object with stats()")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigurationError(f"bad metrics port {port!r}: expected 0-65535")
    collectors = []
    for obj in objects:
        if not callable(getattr(obj, "stats", None)):
            raise ConfigurationError(f"no metrics for {obj!r}: it has no stats()")
        where = endpoint or _where(obj)
        labels = {"service": service, "role": type(obj).__name__.lower(), "endpoint": where}
        collectors.append(StatsCollector(capability_of(obj), obj.stats, labels))
    return MetricsServer(collectors, port, bind)
