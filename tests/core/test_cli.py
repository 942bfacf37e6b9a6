import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import zmqkit
from zmqkit.cli import main
from zmqkit.security import load_keys

ROOT = Path(__file__).resolve().parents[2]


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert zmqkit.__version__ in result.output


def test_keys_generate_writes_a_loadable_pair(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "server", "--dir", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    pair = load_keys(tmp_path / "keys" / "server.key_secret")
    assert len(pair.public) == 40
    assert (tmp_path / "keys" / "server.key").stat().st_mode & 0o077 != 0o077
    assert (tmp_path / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0


def test_zmqkit_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "../escape", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: bad key name '../escape': use a plain file name such as 'server'"
    assert "Traceback" not in result.output


def test_bad_argument_is_usage_error() -> None:
    result = CliRunner().invoke(main, ["--log-level", "loud", "keys"])
    assert result.exit_code == 2
    assert "loud" in result.output


@pytest.mark.timeout(60)
def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "zmqkit"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and zmqkit.__version__ in out.stdout


@pytest.mark.timeout(180)
def test_wheel_holds_only_the_zmqkit_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=170,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("zmqkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"zmqkit"}
    assert "zmqkit/patterns/__init__.py" in names and "zmqkit/cache/__init__.py" in names
    assert "zmqkit/patterns/pipeline/protocol.py" in names and "zmqkit/patterns/reqrep/rpc.py" in names
    assert "zmqkit/py.typed" in names


@pytest.mark.parametrize(
    "argv",
    [
        ["cache", "--ops", "-5"],
        ["cache", "--ops", "0"],
        ["cache", "--rounds", "0"],
        ["reqrep", "-n", "0"],
        ["reqrep", "--window", "0"],
        ["reqrep", "--rounds", "0"],
        ["fanout", "--rounds", "0"],
    ],
    ids=" ".join,
)
def test_a_bench_given_an_empty_sample_refuses_at_once(argv: list[str]) -> None:
    """A bench with nothing to measure is a usage error before any socket (``--ops -5`` used to hang)."""
    result = CliRunner().invoke(main, ["bench", *argv])
    assert result.exit_code == 2 and "is not in the range" in result.output, result.output


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
    return found


def test_every_command_has_a_summary_in_its_groups_help() -> None:
    missing = [" ".join(path) for path, command in _commands(main) if not command.get_short_help_str().strip()]
    assert missing == []
