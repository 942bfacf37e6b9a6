"""``zmqkit bench cache``: local node processes, the client's figures beside raw pyzmq (and memcached) figures
measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import click

from zmqkit.bench import RawReqRep, Row, median_of, print_table, raw_dealer, spawn, take_turns

from .client import CacheClient

__all__ = ["run_bench", "node_processes", "measure_memory"]

_VALUE = b"x" * 100
MB = 2**20


def _serve(queue: Any, memory: str) -> None:
    from .node import CacheNode

    CacheNode("tcp://127.0.0.1:0", memory=memory).serve(ready=queue.put)


@contextlib.contextmanager
def node_processes(count: int, memory: str = "64M") -> Iterator[tuple[list[str], list[Any]]]:
    """``count`` cache nodes, each in its own spawned process; yields (endpoints, processes)."""
    queue = mp.get_context("spawn").Queue()
    procs = [spawn(_serve, queue, memory) for _ in range(count)]
    try:
        endpoints = [queue.get(timeout=30) for _ in procs]
        yield endpoints, procs
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)


def _mean_seconds(fn: Any, n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


async def _pipelined(endpoints: list[str], keys: list[str], rounds: int, tasks: int = 0) -> float:
    """Gets/s from one process: ``tasks`` long-lived tasks each getting its share of ``keys`` one after another
    (how an asyncio server's handlers use a cache), or with ``tasks=0`` one ``gather`` of every key per round."""
    from .aio import AsyncCacheClient

    async with AsyncCacheClient(endpoints) as client:
        await client.get_many(keys)

        async def worker(share: list[str]) -> None:
            for _ in range(rounds):
                for key in share:
                    await client.get(key)

        start = time.perf_counter()
        if tasks:
            await asyncio.gather(*(worker(keys[i::tasks]) for i in range(tasks)))
        else:
            for _ in range(rounds):
                await asyncio.gather(*(client.get(k) for k in keys))
        return rounds * len(keys) / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _memcached(count: int) -> Iterator[list[tuple[str, int]]]:
    ports = [_free_port() for _ in range(count)]
    # memcached refuses to run as root unless told which user to be.
    user = ["-u", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    args = ["memcached", "-l", "127.0.0.1", "-U", "0", "-m", "64", "-t", "1", *user]
    procs = [subprocess.Popen([*args, "-p", str(p)]) for p in ports]
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise click.ClickException(f"memcached on port {port} did not start")
                time.sleep(0.02)
        yield [("127.0.0.1", p) for p in ports]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(5)


@contextlib.contextmanager
def _pymemcache(keys: list[str]) -> Iterator[tuple[Any, Any]]:
    """pymemcache's Client on one local memcached and HashClient over four, loaded with ``keys`` and ``"k"``."""
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    with _memcached(4) as servers:
        single = Client(servers[0])
        hashed = HashClient(servers)
        try:
            single.set("k", _VALUE)
            hashed.set_many(dict.fromkeys(keys, _VALUE))
            yield single, hashed
        finally:
            single.close()
            hashed.close()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise click.ClickException("cannot read RSS from /proc on this system")


def measure_memory(memory: str = "64M", times: int = 10) -> tuple[int, int]:
    """Fill a node with 1 KB values ``times`` x its memory; return (node RSS bytes, memory bytes)."""
    from .store import parse_size

    limit = parse_size(memory)
    value = b"v" * 1024
    with node_processes(1, memory) as (endpoints, procs), CacheClient(endpoints, timeout=10) as client:
        batch = 500
        total = times * limit // 1024
        for start in range(0, total, batch):
            client.set_many({f"fill:{i}": value for i in range(start, start + batch)})
        return _rss_bytes(procs[0].pid), limit


def run_bench(ops: int, *, vs_memcached: bool = False, memory_test: bool = False, rounds: int = 5) -> None:
    """Print the cache benchmark table. Every figure is set beside its baseline measured in turns with it, so a
    noisy neighbour hits both alike: latencies (raw REQ/REP, get, set, pymemcache's get) in short slices, the
    multi-key and asyncio runs (and HashClient's) round after round; each row shows the median."""
    have_memcached = vs_memcached and shutil.which("memcached") is not None
    if vs_memcached and not have_memcached:
        click.echo("memcached is not installed: skipping the memcached rows", err=True)
    keys = [f"key:{i}" for i in range(100)]
    runs: dict[str, list[float]] = {"get_many": [], "tasks": [], "gather": [], "hash_get_many": [], "hash_get": []}
    raw_pipe = raw_dealer(ops * 10, 100)
    with contextlib.ExitStack() as stack:
        mc = stack.enter_context(_pymemcache(keys)) if have_memcached else None
        endpoints, _procs = stack.enter_context(node_processes(4))
        client = stack.enter_context(CacheClient(endpoints))
        one = stack.enter_context(CacheClient(endpoints[:1]))
        raw = stack.enter_context(RawReqRep(100))
        client.set_many(dict.fromkeys(keys, _VALUE))
        one.set("k", _VALUE)
        figures: dict[str, Any] = {
            "raw": raw,
            "get": lambda n: [one.get("k") for _ in range(n)],
            "set": lambda n: [one.set("k", _VALUE) for _ in range(n)],
        }
        if mc is not None:
            figures["pymemcache get"] = lambda n: [mc[0].get("k") for _ in range(n)]
        turns = take_turns(figures, ops, rounds)
        for _ in range(max(1, rounds)):
            runs["get_many"].append(_mean_seconds(lambda: client.get_many(keys), max(ops // 100, 10)))
            runs["tasks"].append(asyncio.run(_pipelined(endpoints, keys * 10, max(ops // 1000, 2), tasks=100)))
            runs["gather"].append(asyncio.run(_pipelined(endpoints, keys * 10, max(ops // 1000, 2))))
            if mc is not None:
                runs["hash_get_many"].append(_mean_seconds(lambda: mc[1].get_many(keys), max(ops // 100, 10)))
                runs["hash_get"].append(_mean_seconds(lambda: mc[1].get(keys[0]), max(ops // 5, 100)))
    med = {name: statistics.median(values) for name, values in runs.items() if values}
    raw_rtt = median_of(turns["raw"])
    rows = [
        Row("get, 1 node", median_of(turns["get"]), "s", raw_rtt, "≤ 1.2x raw REQ/REP", samples=len(turns["get"])),
        Row("set, 1 node", median_of(turns["set"]), "s", raw_rtt),
    ]
    if mc is not None:
        hash_rate = 1 / med["hash_get"]
        rows += [
            Row("pymemcache get", median_of(turns["pymemcache get"]), "s", raw_rtt),
            Row(
                "get_many(100), 4 nodes",
                med["get_many"],
                "s",
                med["hash_get_many"],
                "≤ 0.33x HashClient",
                samples=len(runs["get_many"]),
            ),
            Row("async gets, 100 tasks", med["tasks"], "ops/s", hash_rate, "≥ 5x HashClient gets", samples=rounds),
            Row("async gather(1000 gets)", med["gather"], "ops/s", hash_rate),
        ]
    else:
        rows += [
            Row("get_many(100), 4 nodes", med["get_many"], "s"),
            Row("async gets, 100 tasks", med["tasks"], "ops/s"),
            Row("async gather(1000 gets)", med["gather"], "ops/s"),
        ]
    rows.append(Row("raw DEALER pipelined", raw_pipe, "req/s"))
    print_table(f"zmqkit bench cache (100-byte values, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f})", rows)
    if memory_test:
        rss, limit = measure_memory()
        target = 1.3 * limit + 30 * MB
        verdict = "within" if rss <= target else "ABOVE"
        click.echo(
            f"node RSS after 10x fill of --memory {limit // MB}M: {rss / MB:.1f} MB ({verdict} {target / MB:.1f} MB)"
        )
