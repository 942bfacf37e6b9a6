"""``zmqkit dead list|show|resubmit|purge --spool F`` against a running spool-backed producer."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zmqkit.patterns import Producer, Worker
from zmqkit.testing import wait_until

ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


def dead(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ZMQKIT, "dead", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(90)
def test_dead_letters_listed_shown_resubmitted_and_purged_while_the_producer_runs(tmp_path: Path) -> None:
    spool = str(tmp_path / "outbox.db")
    healed = threading.Event()

    def deliver(message: dict[str, str]) -> str:
        if not healed.is_set():
            raise RuntimeError(f"smtp down for {message['to']}")
        return "sent"

    with Producer(bind="tcp://127.0.0.1:0", spool=spool, max_attempts=1) as producer:
        worker = Worker(deliver, connect=producer.endpoint).start()
        try:
            ids = [producer.send({"to": f"user{i}@example.org"}) for i in range(3)]
            producer.join(timeout=30)
            assert producer.stats()["dead"] == 3

            listed = dead("list", "--spool", spool)
            assert listed.returncode == 0, listed.stderr
            rows = [line.split("\t") for line in listed.stdout.splitlines()]
            assert [int(r[0]) for r in rows] == ids
            assert all(r[1] == "1" and "smtp down" in r[2] for r in rows)
            assert '"to": "user0@example.org"' in rows[0][3]

            shown = dead("show", str(ids[1]), "--spool", spool)
            assert "user1@example.org" in shown.stdout and "attempts: 1" in shown.stdout

            healed.set()
            assert dead("resubmit", str(ids[0]), "--spool", spool).returncode == 0
            wait_until(lambda: producer.stats()["acked"] == 1, 20, "the resubmitted dead letter was acknowledged")
            assert [r.id for r in producer.results(timeout=0)] == [ids[0]]

            unknown = dead("resubmit", "999", "--spool", spool)
            assert unknown.returncode == 1 and "no dead letter 999" in unknown.stderr
            assert dead("purge", "--all", "--spool", spool).stdout.strip() == "purged 2 dead letter(s)"
            assert dead("list", "--spool", spool).stdout == ""
        finally:
            worker.close()


@pytest.mark.timeout(30)
def test_dead_needs_an_existing_spool_and_a_choice_to_purge(tmp_path: Path) -> None:
    assert dead("list", "--spool", str(tmp_path / "nope.db")).returncode == 2
    spool = tmp_path / "outbox.db"
    with Producer(bind="tcp://127.0.0.1:0", spool=str(spool)):
        pass
    assert dead("purge", "--spool", str(spool)).returncode == 2
