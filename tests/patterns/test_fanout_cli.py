"""The fanout commands: pub, sub, forwarder, services and bench fanout, run as the user would run them."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zmqkit.cli import main
from zmqkit.patterns import Publisher, Subscriber

LOCAL = "tcp://127.0.0.1:0"
EXE = str(Path(sys.executable).parent / "zmqkit")


@pytest.mark.timeout(30)
def test_pub_reaches_a_subscriber() -> None:
    with Subscriber(bind=LOCAL, topics=["greet"]) as sub:
        proc = subprocess.Popen([EXE, "pub", sub.endpoint, "greet.x", "hello", "--count", "3"], stdout=subprocess.PIPE)
        bodies = [sub.recv(timeout=20).body for _ in range(3)]
        assert proc.wait(20) == 0
    assert bodies == ["hello"] * 3


@pytest.mark.timeout(30)
def test_sub_prints_json_lines() -> None:
    with Publisher(LOCAL) as pub:
        proc = subprocess.Popen(
            [EXE, "sub", pub.endpoint, "orders.*.paid", "--json", "--count", "1", "--timeout", "20"],
            stdout=subprocess.PIPE,
            text=True,
        )
        pub.wait_for_subscribers(1, timeout=20)
        pub.publish("orders.1.sent", "no")
        pub.publish("orders.1.paid", {"total": 5})
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    record = json.loads(out)
    assert (record["topic"], record["body"], record["seq"], record["missed"]) == ("orders.1.paid", {"total": 5}, 1, 0)


@pytest.mark.timeout(30)
def test_forwarder_command_forwards_until_stopped() -> None:
    proc = subprocess.Popen(
        [EXE, "forwarder", "--xsub", "tcp://127.0.0.1:0", "--xpub", "tcp://127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        xsub, xpub = line.split()[1], line.split()[3]
        with Publisher(connect=xsub) as pub, Subscriber(xpub, ["t"]) as sub:
            pub.wait_for_subscribers(1, timeout=20)
            pub.publish("t", 1)
            assert sub.recv(timeout=20).body == 1
    finally:
        proc.send_signal(signal.SIGTERM)  # a service manager's stop: a clean exit, like Ctrl-C
        assert proc.wait(20) == 0


@pytest.mark.timeout(120)
def test_bench_fanout_runs_and_prints_a_ratio() -> None:
    result = CliRunner().invoke(main, ["bench", "fanout", "--count", "2000", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("pub -> sub"))
    assert "x  >= 0.8x" in row and row.endswith("too few samples (1)")  # one round cannot judge the target
