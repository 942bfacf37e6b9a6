"""Log streaming over fanout: a ``logging.Handler`` that publishes records as JSON on ``logs.<service>.<level>``.

The handler never blocks the application and never raises into it: records go through a bounded queue to a
thread that owns the publisher's socket, and a record that finds the queue full is dropped and counted.
``zmqkit logs`` follows the records of many services at once.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import traceback
from typing import Any

from zmqkit.checks import check_int, check_timeout
from zmqkit.errors import Closed, ConfigurationError, ZmqkitError
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions

from .base import Endpoints
from .sync import Publisher

__all__ = ["LogHandler", "LEVELS", "log_topic", "log_topics"]

# The standard levels, lowest first; a subscriber asks for a level and everything above it.
LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_service(service: str) -> str:
    if not isinstance(service, str) or not service or any(c in service for c in ".*> \t\n"):
        raise ConfigurationError(
            f"bad service name {service!r}: a non-empty name without '.', '*', '>' or spaces (it is a topic segment)"
        )
    return service


def log_topic(service: str, level: str) -> str:
    """The topic a record of ``level`` (a level name) from ``service`` is published on."""
    return f"logs.{service}.{level.lower().replace('.', '_')}"


def log_topics(services: list[str] | tuple[str, ...] = (), level: str = "debug") -> list[str]:
    """The subscription for records at ``level`` and above from ``services`` (none: every service)."""
    name = level.lower()
    if name not in LEVELS:
        raise ConfigurationError(f"bad log level {level!r}: expected one of {', '.join(LEVELS)}")
    wanted = LEVELS[LEVELS.index(name) :]
    names = [_check_service(s) for s in services] or ["*"]
    return [log_topic(s, lvl) for s in names for lvl in wanted]


class _Wait:
    """A request, queued like a record, for the publisher thread to wait for subscribers."""

    def __init__(self, n: int, timeout: float | None) -> None:
        self.n = n
        self.timeout = timeout
        self.done = threading.Event()
        self.error: ZmqkitError | None = None


_STOP = object()


class LogHandler(logging.Handler):
    """Publishes each record as one JSON object on ``logs.<service>.<level>``; never blocks, never raises.

    >>> handler = LogHandler("billing", connect="tcp://logs.internal:5557")
    >>> logging.getLogger().addHandler(handler)

    Records wait in a queue of ``queue_size`` for the thread that owns the socket; one that finds it full is
    dropped and counted in ``dropped``. A subscriber too slow to keep up loses its own copies at its high-water
    mark and sees them in its ``missed`` count. The JSON object has ``service``, ``level``, ``logger``,
    ``message``, ``time`` (unix seconds), ``host``, ``pid`` and, when the record has one, ``exception``.
    """

    def __init__(
        self,
        service: str,
        bind: Endpoints = None,
        *,
        connect: Endpoints = None,
        level: int | str = logging.NOTSET,
        queue_size: int = 10_000,
        options: SocketOptions | None = None,
        curve: Curve | None = None,
    ) -> None:
        super().__init__(level)
        self.service = _check_service(service)
        check_int("queue_size", queue_size, 1)
        self.dropped = 0
        self._closed = False
        self.endpoints: list[str] = []
        self._host = socket.gethostname()
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(bind, connect, options, curve), name=f"zmqkit-logs-{service}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:  # a bad endpoint or option raises here, at once
            raise self._start_error

    @property
    def endpoint(self) -> str:
        """The first endpoint (the real one, when bound to port 0)."""
        return self.endpoints[0]

    def _run(self, bind: Endpoints, connect: Endpoints, options: SocketOptions | None, curve: Curve | None) -> None:
        try:
            publisher = Publisher(bind, connect=connect, codec="json", options=options, curve=curve)
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        with publisher:
            self.endpoints = publisher.endpoints
            self._started.set()
            while (item := self._queue.get()) is not _STOP:
                if isinstance(item, _Wait):
                    try:
                        publisher.wait_for_subscribers(item.n, timeout=item.timeout)
                    except ZmqkitError as exc:
                        item.error = exc
                    item.done.set()
                else:
                    publisher.publish(item["topic"], item["record"])

    def to_json(self, record: logging.LogRecord) -> dict[str, Any]:
        """The JSON object published for ``record`` (its message is formatted now, in the caller's thread)."""
        data: dict[str, Any] = {
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "time": record.created,
            "host": self._host,
            "pid": record.process if record.process is not None else os.getpid(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            data["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return data

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            self.dropped += 1
            return
        try:
            item = {"topic": log_topic(self.service, record.levelname), "record": self.to_json(record)}
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
        except Exception:
            self.handleError(record)  # logging's own policy: report on stderr, never raise into the caller

    def wait_for_subscribers(self, n: int = 1, timeout: float | None = 10.0) -> int:
        """Block until ``n`` subscribers are in, so the records that follow reach them.

        RequestTimeout after ``timeout`` seconds (None: no limit; 0: look once); Closed after :meth:`close`.
        """
        check_timeout(timeout, allow_zero=True)
        if self._closed:
            raise Closed(f"LogHandler {self.service} {self.endpoints} is closed")
        wait = _Wait(n, timeout)
        self._queue.put(wait)
        wait.done.wait()
        if wait.error is not None:
            raise wait.error
        return n

    def close(self) -> None:
        """Send what is queued (the socket's linger bounds it), stop the thread, then detach from logging."""
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        super().close()

    def __repr__(self) -> str:
        return f"<LogHandler {self.service} {self.endpoints} dropped={self.dropped}>"
