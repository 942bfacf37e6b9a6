"""Memoize an expensive function across processes, with stampede protection.

Four processes ask for the same missing value at once: one of them computes it (it holds the lease), the
others wait for its result instead of computing it too. ``python examples/memoize.py``
"""

from __future__ import annotations

import multiprocessing as mp
import time

from zmqkit.cache import CacheClient, CacheNode


def ask(endpoints: list[str], results: mp.Queue[int]) -> None:
    with CacheClient(endpoints) as cache:

        @cache.memoize(ttl=60)
        def slow_report(day: str) -> int:
            cache.incr("computations")  # count how often the expensive part really runs
            time.sleep(0.5)  # stands in for a slow query
            return len(day) * 1000

        results.put(slow_report("2026-11-27"))


def main() -> None:
    nodes = [CacheNode("tcp://127.0.0.1:0", memory="16M") for _ in range(2)]
    endpoints = [node.start() for node in nodes]
    try:
        with CacheClient(endpoints) as cache:
            cache["computations"] = 0
            ctx = mp.get_context("spawn")
            results: mp.Queue[int] = ctx.Queue()
            procs = [ctx.Process(target=ask, args=(endpoints, results)) for _ in range(4)]
            for proc in procs:
                proc.start()
            values = [results.get(timeout=30) for _ in procs]
            for proc in procs:
                proc.join(30)
            print("results:", values)
            print("computed", cache["computations"], "time(s) for", len(procs), "callers")
            assert set(values) == {10_000} and cache["computations"] == 1
    finally:
        for node in nodes:
            node.stop()


if __name__ == "__main__":
    main()
