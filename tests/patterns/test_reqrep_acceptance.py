"""Request-reply acceptance: a thousand clients with nonces; 10,000 requests while a server is killed -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import zmqkit.asyncio as zasync
from zmqkit import RequestTimeout

PROC = str(Path(__file__).with_name("reqrep_proc.py"))


def start_servers(n: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs = [
        subprocess.Popen([sys.executable, PROC, "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    endpoints = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
    assert all(ep.startswith("tcp://") for ep in endpoints), endpoints
    return procs, endpoints


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.stdin.close()  # type: ignore[union-attr]
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture
def three_servers() -> Iterator[tuple[list[subprocess.Popen[str]], list[str]]]:
    procs, endpoints = start_servers(3)
    yield procs, endpoints
    stop(procs)


@pytest.mark.timeout(90)
def test_a_thousand_clients_across_processes_each_get_their_own_replies() -> None:
    procs, endpoints = start_servers(2)
    try:
        clients = [
            subprocess.Popen(
                [sys.executable, PROC, "clients", "250", "4", *endpoints], stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        outputs = [c.communicate(timeout=80)[0].strip() for c in clients]
    finally:
        stop(procs)
    assert outputs == ["ok 1000"] * 4


@pytest.mark.chaos
@pytest.mark.timeout(60)
async def test_ten_thousand_requests_while_a_server_is_killed(
    three_servers: tuple[list[subprocess.Popen[str]], list[str]],
) -> None:
    procs, endpoints = three_servers
    outcomes: dict[str, int] = {"reply": 0, "timeout": 0}
    total = 10_000
    next_id = iter(range(total))
    async with zasync.Client(endpoints, timeout=6, attempt_timeout=1.5, retries=2) as client:

        async def lane() -> None:
            for i in next_id:
                body = b"req-%d" % i
                try:
                    reply = await client.request(body)
                except RequestTimeout:
                    outcomes["timeout"] += 1
                else:
                    assert reply == body
                    outcomes["reply"] += 1
                if i == 2_000:
                    os.kill(procs[1].pid, signal.SIGKILL)

        await asyncio.gather(*(lane() for _ in range(50)))
    assert outcomes["reply"] + outcomes["timeout"] == total
    # Its held requests were moved to the others when the connection dropped: nothing needed a timeout.
    assert outcomes["reply"] >= total - 50
    assert procs[1].wait(5) == -signal.SIGKILL
