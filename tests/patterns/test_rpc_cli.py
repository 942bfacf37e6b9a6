"""``zmqkit rpc serve MODULE:OBJECT`` answers ``zmqkit rpc`` calls, with keyword arguments and JSON output."""

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqkit.endpoints import free_tcp_endpoint
from zmqkit.patterns import RpcClient

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")

SHAPES = """
class Shapes:
    def area(self, width, height=1.0):
        "Width times height."
        return width * height

    def label(self, name, *, upper=False):
        return name.upper() if upper else name

    def _hidden(self):
        return "no"
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "shapes.py").write_text(textwrap.dedent(SHAPES))
    endpoint = free_tcp_endpoint()
    proc = subprocess.Popen(
        [ZMQKIT, "rpc", "serve", "shapes:Shapes", "--bind", endpoint],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    with RpcClient(endpoint, timeout=20) as client:  # answered once it serves
        assert client.call("area", 2) == 2.0
    yield endpoint
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "area, label" in err


def rpc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ZMQKIT, "rpc", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(60)
def test_rpc_serve_answers_calls_with_keyword_arguments_and_json(served: str) -> None:
    assert rpc(served, "area", "3", "height=2.5").stdout.strip() == "7.5"
    assert rpc(served, "label", "box", "upper=true").stdout.strip() == "BOX"
    assert rpc(served, "label", "box", "--json").stdout.strip() == '"box"'
    assert rpc("call", served, "label", '"a=b"').stdout.strip() == "a=b"  # a positional string with '='
    listed = json.loads(rpc(served, "--json").stdout)
    assert set(listed) == {"area", "label"} and listed["area"]["doc"] == "Width times height."
    bad = rpc(served, "area", "height=2", "3")
    assert bad.returncode == 2 and "after keyword arguments" in bad.stderr


@pytest.mark.timeout(30)
def test_rpc_serve_refuses_an_object_without_methods(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("class Nothing:\n    pass\n")
    out = subprocess.run(
        [ZMQKIT, "rpc", "serve", "empty:Nothing", "--bind", "tcp://127.0.0.1:0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "no public methods" in out.stderr
