"""Log streaming: LogHandler publishes records, ``zmqkit logs`` follows many services at once."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from zmqkit import ConfigurationError
from zmqkit.patterns import LogHandler, Subscriber
from zmqkit.patterns.fanout.logs import log_topics
from zmqkit.testing import free_tcp_endpoint

EXE = str(Path(sys.executable).parent / "zmqkit")

SERVICE = """
import logging, sys
from zmqkit.patterns import LogHandler
name, endpoint = sys.argv[1], sys.argv[2]
handler = LogHandler(name, connect=endpoint)
handler.wait_for_subscribers(1, timeout=20)
log = logging.getLogger("app." + name)
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.debug("debug from %s", name)
log.info("info from %s", name)
log.warning("warning from %s", name)
log.error("error from %s", name)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom from %s", name)
handler.close()
"""


@pytest.mark.timeout(60)
def test_logs_shows_exactly_the_warnings_and_above_of_two_services(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    out_file = tmp_path / "all.log"
    follower = subprocess.Popen(
        [
            EXE,
            "logs",
            "--bind",
            endpoint,
            "--level",
            "warning",
            "--json",
            "--count",
            "6",
            "--timeout",
            "30",
            "--to",
            str(out_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    services = [
        subprocess.Popen(
            [sys.executable, "-c", SERVICE, name, endpoint], stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        for name in ("billing", "search")
    ]
    for proc in services:
        _, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
    out, err = follower.communicate(timeout=40)
    assert follower.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    seen = sorted((r["service"], r["level"], r["message"]) for r in records)
    assert seen == sorted(
        (name, level, f"{word} from {name}")
        for name in ("billing", "search")
        for level, word in (("WARNING", "warning"), ("ERROR", "error"), ("ERROR", "boom"))
    )
    boom = next(r for r in records if r["message"].startswith("boom"))
    assert "ZeroDivisionError" in boom["exception"]
    assert all(r["logger"] == f"app.{r['service']}" and r["pid"] > 0 for r in records)
    assert len(out_file.read_text().splitlines()) == 6


@pytest.mark.timeout(30)
def test_a_handler_neither_blocks_nor_raises_and_counts_what_it_drops() -> None:
    handler = LogHandler("svc", "tcp://127.0.0.1:0")
    with Subscriber(handler.endpoint, topics=log_topics(["svc"], "info")) as sub:
        log = logging.getLogger("test.logs.drop")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        try:
            handler.wait_for_subscribers(1, timeout=20)
            log.debug("filtered out by the subscriber")
            log.info("hello %s", "there")
            msg = sub.recv(timeout=20)
            assert msg.topic == "logs.svc.info"
            assert msg.body["message"] == "hello there"
        finally:
            log.removeHandler(handler)
            handler.close()
        handler.handle(logging.makeLogRecord({"msg": "after close"}))  # never raises into the application
        assert handler.dropped == 1


def test_bad_arguments_raise_at_once_with_the_value() -> None:
    with pytest.raises(ConfigurationError, match=r"'a\.b'"):
        LogHandler("a.b", connect="tcp://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="queue_size=0"):
        LogHandler("svc", connect="tcp://127.0.0.1:1", queue_size=0)
    with pytest.raises(ConfigurationError, match="nope"):
        LogHandler("svc", connect="tcp://nope")
    with pytest.raises(ConfigurationError, match="'loud'"):
        log_topics([], "loud")
    assert log_topics(["a"], "error") == ["logs.a.error", "logs.a.critical"]
