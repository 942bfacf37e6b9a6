"""zmqkit.testing's hosts: Linux network namespaces on a private switch, processes inside them, cut and heal.

Every peer runs as a subprocess inside a host; the test process stays in the root namespace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zmqkit import ConfigurationError
from zmqkit.testing import Host, HostProcess, Hosts, netns_unavailable, wait_until

PEERS = str(Path(__file__).with_name("netns_peers.py"))
PORT = 5601


@pytest.fixture
def netns() -> None:
    """Skip, with the reason, where namespaces cannot be made (for tests that make their own Hosts)."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[0] for line in listing.splitlines()}


def _root_links() -> set[str]:
    listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1] for line in listing.splitlines()}


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for an init that does not reap counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _echo(host: Host, cwd: Path) -> HostProcess:
    server = host.python([PEERS, "echo", host.endpoint(PORT)], cwd=cwd)
    server.wait_line("READY", 10)
    return server


def _pinger(host: Host, target: Host, cwd: Path) -> HostProcess:
    return host.python([PEERS, "ping", target.endpoint(PORT)], cwd=cwd, stdin=subprocess.PIPE)


def _ping(pinger: HostProcess) -> str:
    """One request from the pinger's host: ``OK`` or ``TIMEOUT`` (bounded by the pinger's one-second poll)."""
    assert pinger.stdin is not None
    pinger.stdin.write("ping\n")
    pinger.stdin.flush()
    return pinger.wait_line("", 10)


def test_push_in_one_host_reaches_pull_in_another(hosts: Hosts, tmp_path: Path) -> None:
    a, b = hosts
    assert a.address != b.address and a.address.rsplit(".", 1)[0] == b.address.rsplit(".", 1)[0]
    push = a.python([PEERS, "push", a.endpoint(PORT)], cwd=tmp_path)
    assert push.wait_line("READY", 10) == a.endpoint(PORT)
    pull = b.python([PEERS, "pull", a.endpoint(PORT)], cwd=tmp_path)
    assert pull.wait_line("GOT", 10) == "hello"
    push.wait_line("SENT", 10)


def test_a_cut_host_is_unreachable_both_ways_until_healed(hosts: Hosts, tmp_path: Path) -> None:
    a, b = hosts
    _echo(a, tmp_path)
    _echo(b, tmp_path)
    b_to_a, a_to_b = _pinger(b, a, tmp_path), _pinger(a, b, tmp_path)
    assert _ping(b_to_a) == "OK"
    assert _ping(a_to_b) == "OK"

    b.cut()
    assert _ping(b_to_a) == "TIMEOUT", "a REQ from the cut host reached the other host"
    assert _ping(a_to_b) == "TIMEOUT", "the other host reached the cut host"

    b.heal()
    wait_until(lambda: _ping(b_to_a) == "OK", 15, "the healed host to reach the other host again")
    wait_until(lambda: _ping(a_to_b) == "OK", 15, "the other host to reach the healed host again")


def test_add_makes_a_host_at_run_time(hosts: Hosts, tmp_path: Path) -> None:
    c = hosts.add("c")
    assert hosts["c"] is c and hosts[2] is c and len(hosts) == 3
    assert c.address not in {hosts[0].address, hosts[1].address}
    _echo(hosts[0], tmp_path)
    assert _ping(_pinger(c, hosts[0], tmp_path)) == "OK"

    with pytest.raises(ConfigurationError, match="'c'"):
        hosts.add("c")
    with pytest.raises(ConfigurationError, match="'No/Slash'"):
        hosts.add("No/Slash")


def test_close_kills_every_process_and_removes_every_namespace(netns: None, tmp_path: Path) -> None:
    links_before = _root_links()
    with Hosts(2) as made:
        names = {host.netns for host in made}
        assert names <= _namespaces()
        assert _root_links() == links_before, "the hosts' links showed up in the root namespace"
        # A grandchild that left its parent's process group is still killed: it is inside the namespace.
        parent = made[0].python(
            "import subprocess, sys, time;"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True);"
            "print('CHILD', child.pid); time.sleep(300)",
            cwd=tmp_path,
        )
        child = int(parent.wait_line("CHILD", 10))
    assert parent.returncode is not None
    wait_until(lambda: _gone(child), 10, f"the escaped grandchild {child} to be killed")
    assert not names & _namespaces()


def test_hosts_are_removed_when_the_test_is_interrupted(netns: None, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), Hosts(1) as made:
        sleeper = made[0].python("import time; print('UP'); time.sleep(300)", cwd=tmp_path)
        sleeper.wait_line("UP", 10)
        raise KeyboardInterrupt
    assert sleeper.returncode is not None
    assert made[0].netns not in _namespaces()


def test_namespaces_left_by_a_killed_run_are_reaped(netns: None, tmp_path: Path) -> None:
    finished = subprocess.run(["true"], check=True)
    assert finished.returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"zkt-{dead.pid}-0000-left"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"], cwd=tmp_path)
    try:
        with Hosts(0):
            pass
        assert stale not in _namespaces()
        assert orphan.wait(timeout=10) == -9
    finally:
        orphan.kill()
        orphan.wait()
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_wait_line_fails_at_once_when_the_process_exits(hosts: Hosts, tmp_path: Path) -> None:
    quitter = hosts[0].python("print('hello')", cwd=tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match=r"exited with code 0 before a line starting with 'READY'(.|\n)*hello"
    ):
        quitter.wait_line("READY", 30)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="-1"):
        Hosts(-1)


def test_zmqkit_testing_imports_without_pytest(tmp_path: Path) -> None:
    code = "import sys; sys.modules['pytest'] = None; import zmqkit.testing as t; print(t.Hosts.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hosts"
