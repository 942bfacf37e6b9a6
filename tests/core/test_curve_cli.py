"""CURVE from the command line: the three options on every command, ``keys generate`` that keeps a key pair."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from zmqkit import Curve
from zmqkit.cli import CurveFlags, curve_options, main

# Every command that opens a socket (the benchmarks make both ends themselves, so they take no keys).
COMMANDS = [
    ["cache", "serve"],
    ["cache", "get"],
    ["cache", "set"],
    ["cache", "delete"],
    ["cache", "stats"],
    ["cache", "flush"],
    ["rep"],
    ["req"],
    ["rpc", "call"],
    ["rpc", "serve"],
    ["worker"],
    ["logs"],
    ["cache", "gets"],
    ["cache", "add"],
    ["cache", "cas"],
    ["cache", "incr"],
    ["cache", "decr"],
    ["cache", "touch"],
    ["cache", "ping"],
    ["pub"],
    ["sub"],
    ["push"],
    ["pull"],
    ["forwarder"],
    ["proxy"],
    ["services"],
    ["fabric"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_socket_command_shows_the_curve_options(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option, variable in [
        ("--curve-secret", "ZMQKIT_CURVE_SECRET"),
        ("--curve-server", "ZMQKIT_CURVE_SERVER"),
        ("--curve-allow", "ZMQKIT_CURVE_ALLOW"),
    ]:
        assert option in result.output and variable in result.output, (option, result.output)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_keys_generate_twice_refuses_and_keeps_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    first = CliRunner().invoke(main, ["keys", "generate", "server", "--dir", str(folder)])
    assert first.exit_code == 0, first.output
    assert f"created folder {folder}" in first.output
    before = _files(folder)
    second = CliRunner().invoke(main, ["keys", "generate", "server", "--dir", str(folder)])
    assert second.exit_code != 0
    assert "--force" in second.output and "created folder" not in second.output
    assert _files(folder) == before
    forced = CliRunner().invoke(main, ["keys", "generate", "server", "--dir", str(folder), "--force"])
    assert forced.exit_code == 0, forced.output
    after = _files(folder)
    assert after.keys() == before.keys() and after["server.key_secret"] != before["server.key_secret"]


def test_keys_generate_refuses_when_only_the_secret_is_left(tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["keys", "generate", "s", "--dir", str(tmp_path)]).exit_code == 0
    (tmp_path / "s.key").unlink()
    secret = (tmp_path / "s.key_secret").read_bytes()
    result = CliRunner().invoke(main, ["keys", "generate", "s", "--dir", str(tmp_path)])
    assert result.exit_code != 0 and (tmp_path / "s.key_secret").read_bytes() == secret


def _keys(tmp_path: Path) -> Path:
    for name in ("server", "client"):
        assert CliRunner().invoke(main, ["keys", "generate", name, "--dir", str(tmp_path)]).exit_code == 0
    return tmp_path


def test_misplaced_options_are_usage_errors(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    # A client given --curve-allow, a server given --curve-server: mistakes on the command line, exit 2.
    result = CliRunner().invoke(
        main, ["cache", "get", "k", "--curve-server", str(keys / "server.key"), "--curve-allow", str(keys)]
    )
    assert result.exit_code == 2 and "--curve-allow is for servers" in result.output
    result = CliRunner().invoke(main, ["cache", "get", "k", "--curve-secret", str(keys / "client.key_secret")])
    assert result.exit_code == 2 and "needs --curve-server" in result.output
    result = CliRunner().invoke(main, ["cache", "serve", "--curve-allow", str(keys)])
    assert result.exit_code == 2 and "needs --curve-secret" in result.output


def test_curve_flags_from_the_environment(tmp_path: Path) -> None:
    """The variables give the same settings; one that is not this side's (set for the shell) is left alone."""
    keys = _keys(tmp_path)
    seen: dict[str, Curve | None] = {}

    @click.command()
    @curve_options("client")
    def probe(curve: CurveFlags) -> None:
        seen["client"] = curve.for_client()

    env = {
        "ZMQKIT_CURVE_SERVER": str(keys / "server.key"),
        "ZMQKIT_CURVE_SECRET": str(keys / "client.key_secret"),
        "ZMQKIT_CURVE_ALLOW": f"{keys / 'client.key'}:{keys}",
    }
    result = CliRunner().invoke(probe, [], env=env)
    assert result.exit_code == 0, result.output
    client = seen["client"]
    assert client is not None and client.is_client
    assert client.server_key == (keys / "server.key").read_text().split('"')[1].encode()
