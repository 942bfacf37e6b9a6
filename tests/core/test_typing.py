"""A type checker sees zmqkit after the README's install line, and flags a forgotten ``await``."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="needs mypy (in the test extra)")

APP = """
import asyncio

from zmqkit.asyncio import CacheClient, Client, RpcClient


async def main() -> None:
    client = Client(["tcp://127.0.0.1:1"])
    client.request(b"forgotten")  # line 9: no await
    reply: bytes = await client.request(b"awaited")
    rpc = RpcClient(["tcp://127.0.0.1:1"])
    rpc.call("resize", "cat.png")  # line 12: no await
    cache = CacheClient(["tcp://127.0.0.1:1"])
    cache.set("k", 1)  # line 14: no await
    value = await cache.get("k")
    print(reply, value)

asyncio.run(main())
"""


@pytest.mark.timeout(180)
def test_mypy_strict_finds_zmqkit_asyncio_and_flags_a_missing_await(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
        cwd=tmp_path,  # outside the checkout, as a user's app is
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert "import-not-found" not in out.stdout, out.stdout
    flagged = {line.split(":")[1] for line in out.stdout.splitlines() if "unused-coroutine" in line}
    assert flagged == {"9", "12", "14"}, out.stdout
