"""The memcached-style cache commands from the shell: gets/cas, add, incr/decr, touch, ping, set from stdin or a
file, --max-item, and stats --watch, each against a real node."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from zmqkit.cache import CacheClient, CacheNode
from zmqkit.cli import main
from zmqkit.endpoints import free_port


@pytest.fixture
def node() -> Iterator[str]:
    with CacheNode("tcp://127.0.0.1:0", max_item="2M") as running:
        yield running.start()


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


@pytest.mark.timeout(30)
def test_gets_then_cas_stores_only_while_unchanged(node: str) -> None:
    assert cli("cache", "set", "k", "one", "--nodes", node).exit_code == 0
    token, value = cli("cache", "gets", "k", "--nodes", node).output.strip().split("\t")
    assert value == "one"
    assert cli("cache", "cas", "k", token, "two", "--nodes", node).exit_code == 0
    stale = cli("cache", "cas", "k", token, "three", "--nodes", node)
    assert stale.exit_code == 1 and "changed since" in stale.output
    assert cli("cache", "get", "k", "--nodes", node).output.strip() == "two"
    assert cli("cache", "gets", "nope", "--nodes", node).exit_code == 1


@pytest.mark.timeout(30)
def test_add_incr_decr_touch_and_delete(node: str) -> None:
    assert cli("cache", "add", "n", "10", "--nodes", node).exit_code == 0
    again = cli("cache", "add", "n", "99", "--nodes", node)
    assert again.exit_code == 1 and "already there" in again.output
    assert cli("cache", "incr", "n", "5", "--nodes", node).output.strip() == "15"
    assert cli("cache", "decr", "n", "--nodes", node).output.strip() == "14"
    assert cli("cache", "decr", "n", "100", "--nodes", node).output.strip() == "0"
    assert cli("cache", "incr", "missing", "--nodes", node).exit_code == 1
    assert cli("cache", "touch", "n", "60", "--nodes", node).exit_code == 0
    assert cli("cache", "touch", "missing", "60", "--nodes", node).exit_code == 1
    assert cli("cache", "delete", "n", "--nodes", node).exit_code == 0
    assert cli("cache", "delete", "n", "--nodes", node).exit_code == 1


@pytest.mark.timeout(30)
def test_set_reads_stdin_or_a_file_and_takes_the_nodes_max_item(node: str, tmp_path: Path) -> None:
    assert cli("cache", "set", "piped", "-", "--nodes", node, stdin="from stdin").exit_code == 0
    assert cli("cache", "get", "piped", "--nodes", node).output.strip() == "from stdin"
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00\x01" * 700_000)  # 1.4 MB: above the client's old 1 MB default, below the node's 2M
    assert cli("cache", "set", "blob", "--file", str(big), "--nodes", node).exit_code == 0
    with CacheClient([node], timeout=5) as client:
        assert client.get("blob") == big.read_bytes()
    refused = cli("cache", "set", "blob", "--file", str(big), "--max-item", "1M", "--nodes", node)
    assert refused.exit_code == 4 and "max item size" in refused.output
    both = cli("cache", "set", "x", "v", "--file", str(big), "--nodes", node)
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.timeout(30)
def test_ping_names_every_node_and_fails_when_one_is_down(node: str) -> None:
    up = cli("cache", "ping", "--nodes", node)
    assert up.exit_code == 0 and up.output.startswith(node)
    down = f"tcp://127.0.0.1:{free_port()}"
    mixed = cli("cache", "ping", "--nodes", f"{node},{down}", "--timeout", "0.3")
    assert mixed.exit_code == 3 and f"{down}  not answering" in mixed.output


@pytest.mark.timeout(30)
def test_stats_watch_shows_hit_ratio_and_items_per_node(node: str) -> None:
    with CacheClient([node], timeout=5) as client:
        client.set("a", 1)
        client.get("a")
        client.get("b")
    out = cli("cache", "stats", "--nodes", node, "--watch", "0.1", "--samples", "2")
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith(node)]
    assert len(lines) == 2
    assert lines[-1].split()[3] == "1"  # items
