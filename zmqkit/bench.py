"""Benchmark plumbing shared by every ``zmqkit bench`` command: raw pyzmq baselines and the result table.

Each baseline runs plain pyzmq in the same run and on the same machine as the zmqkit figure it is set beside,
with the peer in a second process, so a ratio compares like with like.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
import zmq

__all__ = [
    "Row",
    "print_table",
    "raw_pushpull",
    "raw_pubsub",
    "raw_dealer",
    "spawn",
    "RawReqRep",
    "take_turns",
    "median_of",
    "MIN_SAMPLES",
]

_LOCAL = "tcp://127.0.0.1:*"


def spawn(target: Callable[..., None], *args: object) -> mp.process.BaseProcess:
    """Start ``target(*args)`` in a fresh process (spawned, so no parent sockets or threads leak in)."""
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _bound(ctx: zmq.Context, kind: int) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.bind(_LOCAL)
    return sock, sock.last_endpoint.decode()


def _raw_pusher(endpoint: str, n: int, size: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(endpoint)
    body = b"x" * size
    for _ in range(n):
        s.send(body)
    s.close(linger=-1)
    ctx.term()


def raw_pushpull(n: int, size: int, handler: Callable[[bytes], object] = lambda b: None) -> float:
    """Messages/s through raw PUSH (other process) -> PULL, calling ``handler`` on each like a worker would."""
    ctx = zmq.Context()
    pull, ep = _bound(ctx, zmq.PULL)
    pull.rcvhwm = 0
    proc = spawn(_raw_pusher, ep, n, size)
    handler(pull.recv())
    start = time.perf_counter()
    for _ in range(n - 1):
        handler(pull.recv())
    elapsed = time.perf_counter() - start
    proc.join(10)
    ctx.destroy(linger=0)
    return (n - 1) / elapsed


def _raw_publisher(endpoint: str, n: int, size: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.XPUB)
    s.sndhwm = 0
    s.connect(endpoint)
    s.recv()  # the subscription notice: the subscriber is there, nothing published is lost
    body = b"x" * size
    for _ in range(n):
        s.send_multipart([b"bench", body])
    s.close(linger=-1)
    ctx.term()


def raw_pubsub(n: int, size: int) -> float:
    """Messages/s of raw PUB (other process) -> SUB with [topic, body] frames."""
    ctx = zmq.Context()
    sub, ep = _bound(ctx, zmq.SUB)
    sub.rcvhwm = 0
    sub.subscribe(b"bench")
    proc = spawn(_raw_publisher, ep, n, size)
    sub.recv_multipart()
    start = time.perf_counter()
    for _ in range(n - 1):
        sub.recv_multipart()
    elapsed = time.perf_counter() - start
    proc.join(10)
    ctx.destroy(linger=0)
    return (n - 1) / elapsed


def _raw_replier(endpoint: str, count: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.REP)
    s.connect(endpoint)
    for _ in range(count):  # the plainest echo there is: the floor zmqkit is held to
        s.send(s.recv())
    s.close(linger=-1)
    ctx.term()


class RawReqRep:
    """A raw REQ -> REP echo pair (REP in another process) that stays up between measurements, so a zmqkit
    figure can take turns with it in short rounds; ``raw(n)`` is the mean seconds per round trip of ``n`` more.

    >>> with RawReqRep(100) as raw:
    ...     raw(1000)
    """

    def __init__(self, size: int, count: int = 2**62) -> None:
        self._ctx = zmq.Context()
        self._req, ep = _bound(self._ctx, zmq.REQ)
        self._proc = spawn(_raw_replier, ep, count)
        self._body = b"x" * size
        self._req.send(self._body)  # the first round trip waits for the replier to start: not measured
        self._req.recv()

    def __call__(self, n: int) -> float:
        req, body = self._req, self._body
        start = time.perf_counter()
        for _ in range(n):
            req.send(body)
            req.recv()
        return (time.perf_counter() - start) / n

    def close(self) -> None:
        self._proc.terminate()
        self._proc.join(10)
        self._ctx.destroy(linger=0)

    def __enter__(self) -> RawReqRep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def take_turns(
    figures: dict[str, Callable[[int], object]], ops: int, rounds: int, slices: int = 6
) -> dict[str, list[tuple[float, float]]]:
    """Run every ``figures[name](n)`` (``n`` operations) in turns: ``rounds`` rounds of ``slices`` short slices,
    the order reversed every slice, so a burst of other load on the machine, which lasts about as long as a
    slice, hits them alike. Per name: (wall seconds, this process's CPU seconds) per operation, every slice."""
    n = max(ops // slices, 1)
    names = list(figures)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(max(1, rounds)):
        for turn in range(slices):
            for name in names if turn % 2 == 0 else names[::-1]:
                cpu, start = time.process_time(), time.perf_counter()
                figures[name](n)
                out[name].append(((time.perf_counter() - start) / n, (time.process_time() - cpu) / n))
    return out


def median_of(samples: list[tuple[float, float]], index: int = 0) -> float:
    """The median wall (``index=0``) or CPU (``index=1``) figure of :func:`take_turns` samples."""
    return statistics.median(s[index] for s in samples)


def raw_dealer(n: int, size: int, window: int = 100) -> float:
    """Requests/s of a raw DEALER keeping ``window`` requests in flight to a REP in another process."""
    ctx = zmq.Context()
    dealer, ep = _bound(ctx, zmq.DEALER)
    proc = spawn(_raw_replier, ep, n + 1)
    body = b"x" * size
    dealer.send_multipart([b"", body])
    dealer.recv_multipart()
    start = time.perf_counter()
    sent = received = 0
    while received < n:
        while sent < n and sent - received < window:
            dealer.send_multipart([b"", body])
            sent += 1
        dealer.recv_multipart()
        received += 1
    elapsed = time.perf_counter() - start
    proc.join(10)
    ctx.destroy(linger=0)
    return n / elapsed


MIN_SAMPLES = 3  # fewer measurements than this behind a median do not judge a target


@dataclass
class Row:
    """One benchmark line: a median figure, its unit, and optionally the baseline figure it is compared with.

    ``ratio`` is figure / baseline, so a ratio above 1 means "zmqkit is worse" for latencies and "zmqkit is
    better" for rates, as the targets are written (``"<= 1.15x"``, ``">= 0.8x HashClient"``). ``samples`` is how
    many measurements the median stands on.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    samples: int = 1

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.value / self.baseline

    @property
    def verdict(self) -> str:
        """``met``, ``MISSED``, ``too few samples`` or "" (no target to judge)."""
        bound = _TARGET.search(self.target)
        if bound is None or self.ratio is None:
            return ""
        if self.samples < MIN_SAMPLES:
            return f"too few samples ({self.samples})"
        limit = float(bound.group(2))
        met = self.ratio <= limit if bound.group(1) in ("<=", "≤") else self.ratio >= limit
        return "met" if met else "MISSED"


_TARGET = re.compile(r"(<=|>=|≤|≥)\s*([0-9.]+)x")


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e6:,.1f} µs" if value < 1e-2 else f"{value * 1e3:,.2f} ms"
    return f"{value:,.0f} {unit}"


def print_table(title: str, rows: list[Row]) -> None:
    """Print rows as an aligned table: each median, its baseline, the ratio, the target and whether it is met."""
    click.echo(title)
    width = max(len(r.name) for r in rows) + 2
    target_width = max([len(r.target) for r in rows] + [6]) + 2
    click.echo(f"{'':{width}}{'median':>16}{'baseline':>16}{'ratio':>9}  {'target':{target_width}}verdict")
    for r in rows:
        base = _fmt(r.baseline, r.unit) if r.baseline else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        line = f"{r.name:{width}}{_fmt(r.value, r.unit):>16}{base:>16}{ratio:>9}  {r.target:{target_width}}{r.verdict}"
        click.echo(line.rstrip())
    if any(r.verdict.startswith("too few") for r in rows):
        click.echo(
            f"warning: a median of fewer than {MIN_SAMPLES} measurements cannot judge a target on a shared machine;"
            " run again with more --rounds"
        )
