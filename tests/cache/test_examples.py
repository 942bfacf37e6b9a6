"""The cache examples run as written, each in its own process."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("script", "expected"),
    [("shared_dict.py", "workers done: 3"), ("memoize.py", "computed 1 time(s) for 4 callers")],
)
def test_example_runs(script: str, expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=80, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


@pytest.mark.timeout(180)
def test_bench_cache_against_memcached_runs() -> None:
    pytest.importorskip("pymemcache")
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed (apt-get install memcached)")
    exe = Path(sys.executable).parent / "zmqkit"
    result = subprocess.run(
        [str(exe), "bench", "cache", "--ops", "200", "--vs-memcached"], capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stderr
    for row in (
        "get, 1 node",
        "get_many(100), 4 nodes",
        "async gets, 100 tasks",
        "async gather(1000 gets)",
        "pymemcache get",
    ):
        assert row in result.stdout
