"""``zmqkit worker MODULE:FUNCTION``: a pipeline worker on an importable function, run as an operator would."""

import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from zmqkit.endpoints import free_port
from zmqkit.patterns import Producer

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")

TASKS = """
import asyncio

def double(n):
    return n * 2

async def triple(n):
    await asyncio.sleep(0)
    return n * 3

not_a_function = 7
"""


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    return subprocess.Popen(
        [ZMQKIT, "worker", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)  # finishes what it holds, then exits cleanly
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("function", "factor"), [("double", 2), ("triple", 3)])
def test_worker_runs_a_function_on_a_producers_messages(tmp_path: Path, function: str, factor: int) -> None:
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        proc = _start(tmp_path, f"tasks:{function}", "--connect", producer.endpoint, "--concurrency", "2")
        try:
            ids = {producer.send(n): n for n in range(20)}
            producer.join(timeout=30)
            results = {r.id: r.value for r in producer.results(timeout=0)}
        finally:
            _stop(proc)
    assert results == {i: n * factor for i, n in ids.items()}


@pytest.mark.timeout(60)
def test_worker_serves_metrics_that_count_what_it_processed(tmp_path: Path) -> None:
    port = free_port()
    with Producer(bind="tcp://127.0.0.1:0") as producer:
        proc = _start(
            tmp_path,
            "tasks:double",
            "--connect",
            producer.endpoint,
            "--metrics-port",
            str(port),
            "--metrics-bind",
            "127.0.0.1",
        )
        try:
            for n in range(15):
                producer.send(n)
            producer.join(timeout=30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
        finally:
            _stop(proc)
    processed = re.search(r"^zmqkit_pipeline_processed_total\{.*\} (\S+)$", text, re.M)
    assert processed is not None and float(processed.group(1)) == 15, text


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tasks", "expected MODULE:FUNCTION"),
        ("nosuchmodule:f", "cannot import"),
        ("tasks:nope", "has no"),
        ("tasks:not_a_function", "is not a function"),
    ],
)
def test_worker_names_a_bad_handler(tmp_path: Path, spec: str, message: str) -> None:
    proc = _start(tmp_path, spec, "--connect", "tcp://127.0.0.1:1")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and message in err, err
