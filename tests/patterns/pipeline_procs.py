"""Processes for the pipeline chaos, spool and signal tests: ``python pipeline_procs.py ROLE ENDPOINT [ARG]``."""

from __future__ import annotations

import os
import sys
import time

from zmqkit.patterns import Producer, Worker


def worker(endpoint: str, credit: str = "50") -> None:
    """A worker that dies on the message "poison" and says "ready" once connected."""

    def handle(value: object) -> object:
        if value == "poison":
            os._exit(3)
        if value == "slow":
            time.sleep(0.5)  # a long task: SIGTERM must let it finish and be acknowledged
        return None

    w = Worker(handle, connect=endpoint, credit=int(credit), heartbeat=0.2)
    print("ready", flush=True)
    w.run()
    w.close()


def aworker(endpoint: str) -> None:
    """The asyncio twin of ``worker``: an async handler that takes a while."""
    import asyncio

    from zmqkit.asyncio import Worker as AsyncWorker

    async def handle(value: object) -> None:
        await asyncio.sleep(0.5)  # a long task: SIGTERM must let it finish and be acknowledged

    async def main() -> None:
        w = AsyncWorker(handle, connect=endpoint, credit=1, heartbeat=0.2)
        print("ready", flush=True)
        await w.run()

    asyncio.run(main())


def spool_producer(endpoint: str, spool: str) -> None:
    """Accept 500 messages into ``spool`` with no worker around, say so, then wait to be killed."""
    p = Producer(bind=endpoint, spool=spool)
    for i in range(500):
        p.send(i)
    print("accepted", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    {"worker": worker, "aworker": aworker, "spool_producer": spool_producer}[sys.argv[1]](*sys.argv[2:])
