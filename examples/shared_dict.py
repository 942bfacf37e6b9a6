"""Several processes share one dict through a local cache cluster.

Run it: ``python examples/shared_dict.py`` (starts three nodes in this process), or point it at running nodes:
``ZMQKIT_CACHE_NODES=tcp://127.0.0.1:11311,tcp://127.0.0.1:11312 python examples/shared_dict.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os

from zmqkit.cache import CacheClient, CacheNode


def worker(endpoints: list[str], name: str) -> None:
    """One process: write its own entries, and count itself in a shared counter."""
    with CacheClient(endpoints) as shared:
        shared[f"greeting:{name}"] = f"hello from {name} (pid {os.getpid()})"
        shared.set_many({f"{name}:square:{i}": i * i for i in range(10)})
        shared.incr("workers_done")


def main() -> None:
    nodes: list[CacheNode] = []
    endpoints = [e for e in os.environ.get("ZMQKIT_CACHE_NODES", "").split(",") if e]
    if not endpoints:
        nodes = [CacheNode("tcp://127.0.0.1:0", memory="16M") for _ in range(3)]
        endpoints = [node.start() for node in nodes]
    try:
        with CacheClient(endpoints) as shared:
            shared["workers_done"] = 0
            names = ["alice", "bob", "carol"]
            procs = [mp.get_context("spawn").Process(target=worker, args=(endpoints, n)) for n in names]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(30)
            print("workers done:", shared["workers_done"])
            for name in names:
                print(shared[f"greeting:{name}"].split(" (pid")[0], "| 9 squared =", shared[f"{name}:square:9"])
            per_node = {ep: s["items"] for ep, s in shared.stats().items()}
            print("items per node:", sorted(per_node.values()))
            assert shared["workers_done"] == len(names)
    finally:
        for node in nodes:
            node.stop()


if __name__ == "__main__":
    main()
