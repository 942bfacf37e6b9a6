"""The request-reply CLI: req, rep (an echo server), rpc, proxy, bench reqrep."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zmqkit.cli import main
from zmqkit.patterns import RpcServer, Server
from zmqkit.testing import free_tcp_endpoint


def zmqkit_process(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    # cwd away from the checkout, so ``-m zmqkit`` imports the installed package, not the source folder.
    return subprocess.Popen([sys.executable, "-m", "zmqkit", *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(20)
def test_req_against_a_server() -> None:
    with Server("tcp://127.0.0.1:0", lambda body: body[::-1]) as server:
        result = CliRunner().invoke(main, ["req", server.endpoints[0], "hello"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "olleh"


@pytest.mark.timeout(20)
def test_req_with_nobody_there_is_one_clean_line() -> None:
    result = CliRunner().invoke(main, ["req", free_tcp_endpoint(), "hi", "--timeout", "0.3"])
    assert result.exit_code == 1
    assert "Error: no server was ready" in result.output and "Traceback" not in result.output


@pytest.mark.timeout(20)
def test_rpc_lists_and_calls() -> None:
    server = RpcServer("tcp://127.0.0.1:0")

    @server.method
    def area(w: float, h: float) -> float:
        """Area of a rectangle."""
        return w * h

    with server:
        listed = CliRunner().invoke(main, ["rpc", server.endpoints[0]])
        called = CliRunner().invoke(main, ["rpc", server.endpoints[0], "area", "3", "2.5"])
        missing = CliRunner().invoke(main, ["rpc", server.endpoints[0], "volume"])
    assert listed.exit_code == 0 and "area(w: float, h: float) -> float  Area of a rectangle." in listed.output
    assert called.exit_code == 0 and called.output.strip() == "7.5"
    assert missing.exit_code == 1 and "MethodNotFound" in missing.output and "'volume'" in missing.output


@pytest.mark.timeout(30)
def test_rpc_against_a_plain_server_says_it_is_not_an_rpc_server(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    echo = zmqkit_process(tmp_path, "rep", endpoint)  # echoing is what rep does: no option needed
    try:
        listed = CliRunner().invoke(main, ["rpc", endpoint, "--timeout", "10"])
        called = CliRunner().invoke(main, ["rpc", endpoint, "add", "1", "2", "--timeout", "10"])
    finally:
        echo.send_signal(signal.SIGINT)
        assert echo.wait(15) == 0, echo.stderr.read() if echo.stderr else ""
    for result in (listed, called):
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: {endpoint}: not an RPC server (its reply is not an RPC answer)")
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.timeout(30)
def test_rep_echo_and_proxy_processes(tmp_path: Path) -> None:
    front, back = free_tcp_endpoint(), free_tcp_endpoint()
    device = zmqkit_process(tmp_path, "proxy", "--frontend", front, "--backend", back)
    echo = zmqkit_process(tmp_path, "rep", back, "--echo", "--connect")
    try:
        result = CliRunner().invoke(main, ["req", front, "through the proxy", "--timeout", "10"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "through the proxy"
    finally:
        for proc in (echo, device):
            proc.send_signal(signal.SIGINT)
        for proc in (echo, device):
            assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""


@pytest.mark.timeout(120)
def test_bench_reqrep_prints_ratios() -> None:
    result = CliRunner().invoke(main, ["bench", "reqrep", "-n", "300", "--window", "20", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "sync round trip" in result.output and "async pipelined" in result.output
    assert result.output.count("x  ") >= 2  # a ratio on each row
