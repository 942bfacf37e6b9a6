"""The pipeline CLI (push, pull, bench pipeline) and the pipeline examples, each run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zmqkit.cli import main
from zmqkit.patterns import Producer, Worker

ROOT = Path(__file__).resolve().parents[2]
ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


@pytest.mark.timeout(30)
def test_push_lines_to_a_worker_and_print_results(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/queue"  # ipc: a worker retrying a TCP connect to a free port can land on it
    with Worker(str.upper, connect=endpoint, heartbeat=0.1) as worker:
        worker.start()
        result = CliRunner().invoke(main, ["push", endpoint, "-", "--timeout", "20"], input="one\ntwo\n")
    assert result.exit_code == 0, result.output
    assert "'ONE'" in result.output and "'TWO'" in result.output and "acked 2, dead 0" in result.output


@pytest.mark.timeout(30)
def test_pull_prints_messages_from_a_producer() -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        proc = subprocess.Popen([ZMQKIT, "pull", producer.endpoint, "--count", "2"], stdout=subprocess.PIPE, text=True)
        try:
            producer.send("hello")
            producer.send(b"raw")
            out, _ = proc.communicate(timeout=20)
        finally:
            proc.kill()
            proc.wait()
        producer.join(timeout=10)
    assert out.splitlines() == ["hello", "b'raw'"]


@pytest.mark.timeout(30)
def test_push_with_bad_endpoint_is_one_clean_line() -> None:
    result = CliRunner().invoke(main, ["push", "nowhere", "x"])
    assert result.exit_code == 1 and "'nowhere'" in result.output and "Traceback" not in result.output


@pytest.mark.timeout(120)
def test_bench_pipeline_runs_and_prints_ratios_where_pytest_is_not_installed(tmp_path: Path) -> None:
    (tmp_path / "pytest.py").write_text("raise ImportError('pytest is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # production code must not need the test tools
    out = subprocess.run(
        [ZMQKIT, "bench", "pipeline", "-n", "3000", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "raw pyzmq PUSH/PULL" in out.stdout and "fire-and-forget" in out.stdout and "acknowledged" in out.stdout
    assert out.stdout.count("x ") >= 2  # two ratios


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", ["email_queue.py", "thumbnails.py"])
def test_example_runs(example: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / example)], capture_output=True, text=True, timeout=55)
    assert out.returncode == 0, out.stderr
    if example == "email_queue.py":
        assert "dead letter: mallory@invalid.example after 3 attempts" in out.stdout
        assert "grace@greylisted.example: 3 attempt(s)" in out.stdout
    else:
        assert "12 thumbnails" in out.stdout
