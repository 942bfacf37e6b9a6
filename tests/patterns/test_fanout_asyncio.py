"""The asyncio twins: Publisher, Subscriber and Directory from zmqkit.asyncio, over real sockets."""

import asyncio

import pytest

from zmqkit import RequestTimeout
from zmqkit.asyncio import Directory, Forwarder, Presence, Publisher, Subscriber

LOCAL = "tcp://127.0.0.1:0"


@pytest.mark.timeout(30)
async def test_async_publish_and_receive_with_wildcards() -> None:
    async with Publisher(LOCAL) as pub, Subscriber(pub.endpoint, ["orders.*.paid"]) as sub:
        assert await pub.wait_for_subscribers(1, timeout=10) == 1
        await pub.publish("orders.1.sent", 0)
        await pub.publish("orders.1.paid", 1)
        msg = await sub.recv(timeout=10)
        assert (msg.topic, msg.body, msg.seq) == ("orders.1.paid", 1, 1)
        with pytest.raises(RequestTimeout):
            await sub.recv(timeout=0.1)
        await pub.publish("orders.2.paid", 2)
        async for msg in sub:
            assert msg.body == 2
            break


@pytest.mark.timeout(30)
async def test_async_twenty_subscribers_through_a_forwarder() -> None:
    with Forwarder() as fwd:
        async with Publisher(connect=fwd.xsub_endpoint) as pub:
            subs = [Subscriber(fwd.xpub_endpoint, ["feed"]) for _ in range(20)]
            try:
                await pub.wait_for_subscribers(20, timeout=20)
                for i in range(50):
                    await pub.publish("feed", i)
                firsts = await asyncio.gather(*[s.recv(timeout=10) for s in subs])
                assert [m.body for m in firsts] == [0] * 20
                for s in subs:
                    assert [(await s.recv(timeout=10)).seq for _ in range(49)] == list(range(2, 51))
                    assert s.missed == 0
            finally:
                for s in subs:
                    s.close()


@pytest.mark.timeout(30)
async def test_async_presence_and_directory_wait() -> None:
    async with Directory(bind=LOCAL) as directory, Presence(directory.endpoint) as presence:
        assert await presence.wait_for_directories(1, timeout=10) == 1
        presence.announce("queue", "tcp://10.0.0.1:5555", status="maintenance")
        entry = await directory.wait("queue", timeout=10, status=None)
        assert entry.status == "maintenance"
        with pytest.raises(RequestTimeout, match="'queue'"):
            await directory.wait("queue", timeout=0.2, status="up")
