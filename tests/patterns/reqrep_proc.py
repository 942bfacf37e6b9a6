"""Processes for the request-reply acceptance tests (run as scripts, not collected by pytest).

``server``: an echo server that prints its endpoint and serves until stdin closes or it is killed.
``clients N M ENDPOINT...``: N asyncio clients, each sending M requests with random nonces, checking each reply
matches its own request; prints ``ok <replies>`` or ``bad <why>``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from zmqkit.asyncio import Client
from zmqkit.patterns import Server


def serve() -> None:
    with Server("tcp://127.0.0.1:0", lambda body: body, concurrency=2) as server:
        print(server.endpoints[0], flush=True)
        sys.stdin.read()  # until the test closes our stdin


async def clients(n: int, m: int, endpoints: list[str]) -> str:
    pool = [Client(endpoints, timeout=20) for _ in range(n)]
    try:

        async def one(client: Client) -> int:
            good = 0
            for _ in range(m):
                nonce = os.urandom(16)
                if await client.request(nonce) != nonce:
                    raise AssertionError(f"reply does not match nonce {nonce.hex()}")
                good += 1
            return good

        return f"ok {sum(await asyncio.gather(*(one(c) for c in pool)))}"
    except Exception as exc:
        return f"bad {type(exc).__name__}: {exc}"
    finally:
        for c in pool:
            c.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        print(asyncio.run(clients(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])), flush=True)
