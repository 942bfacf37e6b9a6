"""``zmqkit cache``: serve in a subprocess, then get/set/delete/stats/flush against it, and clean shutdown."""

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from zmqkit.cache.cli import node_endpoints
from zmqkit.cli import main
from zmqkit.errors import ConfigurationError
from zmqkit.testing import free_port

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


def start_serve(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [ZMQKIT, "cache", "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    endpoints = []
    assert proc.stdout is not None
    for line in proc.stdout:
        assert line.startswith("cache node listening on "), line
        endpoints.append(line.split()[4])
        if len(endpoints) == int(args[args.index("--nodes") + 1]):
            break
    return proc, endpoints


def consecutive_free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 were all free a moment ago."""
    for _ in range(50):
        base = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError("no run of free ports")


@pytest.fixture
def served() -> Iterator[str]:
    base = consecutive_free_ports(2)
    proc, endpoints = start_serve("--bind", f"tcp://127.0.0.1:{base}", "--nodes", "2", "--memory", "8M")
    assert endpoints == [f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"]
    yield ",".join(endpoints)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.timeout(60)
def test_get_set_delete_stats_flush(served: str) -> None:
    assert cli("cache", "set", "greeting", "hello", "--nodes", served) == (0, "stored\n")
    assert cli("cache", "get", "greeting", "--nodes", served) == (0, "hello\n")
    assert cli("cache", "set", "n", "[1, 2]", "--json", "--ttl", "60", "--nodes", served) == (0, "stored\n")
    assert cli("cache", "get", "n", "--nodes", served) == (0, "[1, 2]\n")
    code, out = cli("cache", "stats", "--nodes", served)
    assert code == 0
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert lines["items"][-1] == "2" and lines["limit_maxbytes"][-1] == str(2 * 8 * 2**20)
    assert lines["malformed"][-1] == "0" and lines["leases"][-1] == "0"
    assert cli("cache", "delete", "greeting", "--nodes", served) == (0, "deleted\n")
    code, out = cli("cache", "get", "greeting", "--nodes", served)
    assert (code, out) == (1, "Error: 'greeting' not found\n")
    assert cli("cache", "flush", "--nodes", served) == (0, "flushed 2 node(s)\n")
    assert cli("cache", "get", "n", "--nodes", served)[0] == 1


@pytest.mark.timeout(30)
def test_unreachable_node_is_one_line_error() -> None:
    # exit 1 means "missing" and nothing else: no node answering is 3, any other error 4 (see --help)
    code, out = cli("cache", "get", "k", "--nodes", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.2")
    assert code == 3 and out.startswith("Error: no cache node answers") and "Traceback" not in out
    code, out = cli("cache", "get", "k", "--nodes", "nonsense")
    assert code == 4 and "bad endpoint 'nonsense'" in out
    code, out = cli("cache", "get", "--help")
    assert code == 0 and "1  not done: the key is not there" in out and "3  no node answered" in out


@pytest.mark.timeout(30)
def test_serve_stops_on_ctrl_c() -> None:
    proc, endpoints = start_serve("--bind", "tcp://127.0.0.1:0", "--nodes", "1")
    assert endpoints[0].startswith("tcp://127.0.0.1:")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_node_endpoints() -> None:
    assert node_endpoints("2") == ["tcp://127.0.0.1:11311", "tcp://127.0.0.1:11312"]
    assert node_endpoints("3", "tcp://10.0.0.1:7000")[-1] == "tcp://10.0.0.1:7002"
    assert node_endpoints("tcp://a:1, tcp://b:2") == ["tcp://a:1", "tcp://b:2"]
    with pytest.raises(ConfigurationError, match="needs a tcp --bind with a port"):
        node_endpoints("2", "tcp://127.0.0.1:0")


def test_bench_cache_is_registered() -> None:
    code, out = cli("bench", "cache", "--help")
    assert code == 0 and "--vs-memcached" in out


def test_serve_bad_memory_is_one_line_error() -> None:
    code, out = cli("cache", "serve", "--memory", "lots", "--bind", "tcp://127.0.0.1:0")
    assert code == 1 and out == "Error: bad size 'lots': expected bytes or a number with K, M or G (64M)\n"


@pytest.mark.timeout(60)
def test_curve_serve_answers_the_right_keys_and_names_authentication_to_others(tmp_path: Path) -> None:
    """The acceptance of issue 12: a CURVE node serves set/get given the right keys; without them, get fails
    within its timeout with a message about authentication, not "down"."""
    for name in ("server", "client", "stranger"):
        assert cli("keys", "generate", name, "--dir", str(tmp_path))[0] == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((tmp_path / "client.key").read_bytes())
    port = free_port()
    proc, endpoints = start_serve(
        "--bind", f"tcp://127.0.0.1:{port}", "--nodes", "1",
        "--curve-secret", str(tmp_path / "server.key_secret"), "--curve-allow", str(allowed),
    )  # fmt: skip
    try:
        node = endpoints[0]
        keys = ["--curve-server", str(tmp_path / "server.key"), "--curve-secret", str(tmp_path / "client.key_secret")]
        assert cli("cache", "set", "greeting", "hello", "--nodes", node, *keys) == (0, "stored\n")
        assert cli("cache", "get", "greeting", "--nodes", node, *keys) == (0, "hello\n")
        wrong = [
            [],  # no CURVE against a CURVE node
            ["--curve-server", str(tmp_path / "server.key"), "--curve-secret", str(tmp_path / "stranger.key_secret")],
            ["--curve-server", str(tmp_path / "server.key")],  # a fresh key pair: not allowed either
            ["--curve-server", str(tmp_path / "stranger.key"), "--curve-secret", str(tmp_path / "client.key_secret")],
        ]
        for args in wrong:
            started = time.monotonic()
            code, out = cli("cache", "get", "greeting", "--nodes", node, "--timeout", "5", *args)
            assert code != 0 and "authentication" in out.lower() and "down" not in out, (args, out)
            assert node in out
            assert time.monotonic() - started < 5, (args, out)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
