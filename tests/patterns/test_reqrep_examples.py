"""The request-reply examples run to completion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.timeout(60)
def test_rpc_offload_example_takes_a_server_down_and_no_call_fails() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "rpc_offload.py")], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "600 calls, 0 failed" in result.stdout
    assert "backend-1 left cleanly" in result.stdout
