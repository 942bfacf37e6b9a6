"""The machine-room example runs to completion: services found by name, a cache node joining (about a quarter
of the keys move), a server leaving while calls run, and no call failing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.timeout(60)
def test_machine_room_example(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "machine_room.py")], capture_output=True, text=True, timeout=50, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "services on the fabric: ['cache', 'thumbs']" in out
    moved = re.search(r"a cache node joined: (\d+)% of the keys moved to it", out)
    assert moved is not None and 15 <= int(moved.group(1)) <= 35, out
    assert "thumbs-a left: 0 calls reached it afterwards" in out
    assert re.search(r"calls: \d+, failed: 0;", out), out
    assert out.rstrip().endswith("machine room done")
