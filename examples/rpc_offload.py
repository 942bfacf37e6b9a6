"""A front end offloads work to a pool of back-end RPC servers; one is taken down for maintenance mid-run.

Run it: ``python examples/rpc_offload.py``. It starts three back ends (threads here; separate machines in real
life), makes 600 calls from one asyncio front end with 40 in flight, and halfway through asks one back end to
leave gracefully. No call fails: the leaving server says goodbye, finishes what it holds, and the client sends
new work to the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

import zmqkit.asyncio as zasync
from zmqkit.patterns import RpcServer


def make_backend(name: str) -> RpcServer:
    server = RpcServer("tcp://127.0.0.1:0", concurrency=4)

    @server.method
    def thumbnail(photo_id: int, size: int) -> dict[str, object]:
        """Pretend to resize a photo: some CPU work, then a result naming who did it."""
        digest = hashlib.sha256(b"%d" % photo_id * 2000).hexdigest()[:12]
        return {"photo": photo_id, "size": size, "digest": digest, "by": name}

    return server.start()


async def front_end(backends: list[RpcServer], calls: int = 600, in_flight: int = 40) -> int:
    endpoints = [b.endpoints[0] for b in backends]
    done = failed = 0
    by_server: dict[str, int] = {}
    halfway = asyncio.Event()
    async with zasync.RpcClient(endpoints, timeout=10) as client:
        print("ready:", ", ".join(await client.wait_ready(5)))
        print("methods:", ", ".join(await client.methods()))
        todo = iter(range(calls))

        async def lane() -> None:
            nonlocal done, failed
            for photo in todo:
                try:
                    result = await client.api.thumbnail(photo, 128)
                    by_server[result["by"]] = by_server.get(result["by"], 0) + 1
                except Exception as exc:  # the point of the example: this never happens
                    failed += 1
                    print("call failed:", exc)
                done += 1
                if done == calls // 2:
                    halfway.set()

        lanes = asyncio.gather(*(lane() for _ in range(in_flight)))
        await halfway.wait()
        print(f"{done} calls done; taking backend-1 down for maintenance")
        cleanly = await asyncio.to_thread(backends[1].leave, 10)
        print(f"backend-1 left {'cleanly' if cleanly else 'with work unfinished'}")
        await lanes
    print(f"{done} calls, {failed} failed; handled per back end: {dict(sorted(by_server.items()))}")
    return failed


def main() -> int:
    backends = [make_backend(f"backend-{i}") for i in range(3)]
    try:
        failed = asyncio.run(front_end(backends))
    finally:
        for backend in backends:
            backend.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
