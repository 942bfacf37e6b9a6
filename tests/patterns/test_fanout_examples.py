"""Each fanout example runs to the end as a script and prints what it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.timeout(90)
def test_log_stream_example() -> None:
    out = _run("log_stream.py", "--services", "2", "--events", "500")
    assert "svc0        495      5" in out and "svc1        495      5" in out
    assert "missed 0" in out


@pytest.mark.timeout(90)
def test_presence_example() -> None:
    out = _run("presence.py")
    assert "client: orders-queue is at tcp://10.0.0." in out
    assert "('tcp://10.0.0.6:6000', 'up'), ('tcp://10.0.0.5:6000', 'maintenance')" in out
    assert "watch: removed search tcp://10.0.0.6:7000 down" in out
    assert "client: after host B left: [('orders-queue', 'maintenance')]" in out
