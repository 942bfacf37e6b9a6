"""Fanout discovery on loopback: publishers announce a service, subscribers connect to every publisher of it as
they come and go (issue 14), sync, callback and asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmqkit import ConfigurationError, RequestTimeout
from zmqkit import asyncio as zasyncio
from zmqkit.patterns import Publisher, Subscriber
from zmqkit.patterns.fanout.protocol import Message
from zmqkit.patterns.presence.fabric import Fabric, FabricServer
from zmqkit.patterns.presence.protocol import Entry
from zmqkit.testing import wait_until

INTERVAL = 0.2


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with FabricServer("tcp://127.0.0.1:0") as server, Fabric([server.endpoint], interval=INTERVAL) as member:
        yield member


@pytest.mark.timeout(30)
def test_a_publisher_found_by_name_and_one_started_later(fabric: Fabric) -> None:
    with (
        Publisher("tcp://127.0.0.1:0", announce="news", fabric=fabric) as first,
        Subscriber(service="news", topics=["sport"], fabric=fabric) as sub,
    ):
        assert sub.service == "news"
        # recv() looks at membership while it waits: the subscriber connects and the publisher sees it.
        with pytest.raises(RequestTimeout, match="no message"):
            sub.recv(timeout=2 * INTERVAL + 0.5)
        first.wait_for_subscribers(1, timeout=5)
        first.publish("sport", 1)
        first.publish("weather", "ignored")
        assert sub.recv(timeout=5).body == 1
        with Publisher("tcp://127.0.0.1:0", announce="news", fabric=fabric) as second:
            got: set[object] = set()

            def both() -> bool:
                # Keep receiving (membership is applied between receives) and keep publishing until both arrive.
                if second.subscribers:
                    second.publish("sport", "second")
                first.publish("sport", "first")
                with contextlib.suppress(RequestTimeout):
                    got.add(sub.recv(timeout=0.05).body)
                return {"first", "second"} <= got

            wait_until(both, 2 * INTERVAL + 5, "messages from both publishers, the second found while running")
            assert sorted(sub.endpoints) == sorted([first.endpoint, second.endpoint])
        # The second one is gone (down): the subscriber lets it go.
        wait_until(lambda: _received_then(sub, first) == [first.endpoint], 5, "the gone publisher let go")


def _received_then(sub: Subscriber, pub: Publisher) -> list[str]:
    pub.publish("sport", "tick")
    with contextlib.suppress(RequestTimeout):
        sub.recv(timeout=0.05)
    return list(sub.endpoints)


@pytest.mark.timeout(30)
def test_callback_subscriber_follows_the_service(fabric: Fabric) -> None:
    got: list[Message] = []
    lock = threading.Lock()

    def keep(msg: Message) -> None:
        with lock:
            got.append(msg)

    with Subscriber(service="news", fabric=fabric, callback=keep) as sub:
        with Publisher("tcp://127.0.0.1:0", announce="news", fabric=fabric) as pub:
            pub.wait_for_subscribers(1, timeout=2 * INTERVAL + 5)
            for i in range(10):
                pub.publish("t", i)
            wait_until(lambda: len(got) == 10, 5, "10 messages through the callback")
        assert sub.service == "news"


@pytest.mark.timeout(30)
def test_publisher_close_announces_maintenance_then_down(fabric: Fabric) -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(event: str, entry: Entry) -> None:
        with lock:
            events.append((event, entry.status))

    unwatch = fabric.watch("news", record)
    try:
        pub = Publisher("tcp://127.0.0.1:0", announce="news", fabric=fabric)
        wait_until(lambda: ("added", "up") in events, 5, "the publisher announced up")
        pub.close()
        wait_until(lambda: events[-1][0] == "removed", 5, "the closed publisher announced down")
        assert ("changed", "maintenance") in events, events
    finally:
        unwatch()


@pytest.mark.timeout(30)
def test_asyncio_subscriber_finds_a_publisher(fabric: Fabric) -> None:
    async def main() -> None:
        async with (
            zasyncio.Subscriber(service="news", fabric=fabric) as sub,
            zasyncio.Publisher("tcp://127.0.0.1:0", announce="news", fabric=fabric) as pub,
        ):
            recv = asyncio.ensure_future(sub.recv(timeout=10))
            await pub.wait_for_subscribers(1, timeout=2 * INTERVAL + 5)
            await pub.publish("t", "hello")
            assert (await recv).body == "hello"

    asyncio.run(main())


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError, match="together"):
        Subscriber("tcp://127.0.0.1:5556", service="news", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs service"):
        Subscriber("tcp://127.0.0.1:5556", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs bind"):
        Publisher(connect="tcp://127.0.0.1:5556", announce="news", fabric="tcp://127.0.0.1:5557")
    with pytest.raises(ConfigurationError, match="needs announce"):
        Publisher("tcp://127.0.0.1:0", fabric="tcp://127.0.0.1:5557")


ZMQKIT = str(Path(sys.executable).parent / "zmqkit")


@pytest.mark.timeout(60)
def test_cli_sub_finds_an_announced_pub(tmp_path: Path) -> None:
    with FabricServer("tcp://127.0.0.1:0") as server:
        fabric = ["--fabric", server.endpoint]
        sub = subprocess.Popen(
            [ZMQKIT, "sub", "--service", "news", "sport", "--count", "1", "--timeout", "30", *fabric],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            pub = subprocess.run(
                [ZMQKIT, "pub", "tcp://127.0.0.1:0", "sport", "goal", "--bind", "--announce", "news", *fabric],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert pub.returncode == 0, pub.stderr
            out, err = sub.communicate(timeout=30)
        finally:
            sub.kill()
            sub.wait()
        assert sub.returncode == 0, err
        assert out.strip() == "sport goal"
        usage = subprocess.run(
            [ZMQKIT, "sub", "tcp://127.0.0.1:5556", "--bind", "--service", "news", *fabric],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert usage.returncode == 2 and "--service" in usage.stderr
