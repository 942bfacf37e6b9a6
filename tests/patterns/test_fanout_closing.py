"""Closing fanout and presence objects: use after close raises Closed, asyncio twins aclose, signatures say all."""

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable

import pytest

import zmqkit.asyncio as zasync
from zmqkit import Closed, RequestTimeout
from zmqkit.patterns import Directory, Forwarder, LogHandler, Presence, Publisher, Subscriber

LOCAL = "tcp://127.0.0.1:0"


@pytest.mark.timeout(20)
def test_publisher_and_subscriber_used_after_close_raise_closed() -> None:
    pub = Publisher(LOCAL)
    sub = Subscriber(pub.endpoint, ["t"])
    callback = Subscriber(pub.endpoint, ["t"], callback=lambda msg: None)
    for obj in (pub, sub, callback):
        obj.close()
        obj.close()  # idempotent
    with pytest.raises(Closed, match=r"Publisher \['tcp://127\.0\.0\.1:\d+'\] is closed"):
        pub.publish("t", 1)
    with pytest.raises(Closed, match="Publisher"):
        pub.wait_for_subscribers(1, timeout=1)
    with pytest.raises(Closed, match="Publisher"):
        _ = pub.subscribers
    for s in (sub, callback):
        with pytest.raises(Closed, match=r"Subscriber \['tcp://127\.0\.0\.1:\d+'\] is closed"):
            s.recv(timeout=1)
        with pytest.raises(Closed, match="Subscriber"):
            next(iter(s))


@pytest.mark.timeout(20)
def test_presence_directory_and_log_handler_used_after_close_raise_closed() -> None:
    directory = Directory(bind=LOCAL)
    presence = Presence(directory.endpoint)
    handler = LogHandler("svc", LOCAL)
    for obj in (presence, directory, handler):
        obj.close()
        obj.close()
    with pytest.raises(Closed, match=r"Presence \['tcp://"):
        presence.announce("a", "tcp://h:1")
    with pytest.raises(Closed, match="Presence"):
        presence.wait_for_directories(1, timeout=1)
    with pytest.raises(Closed, match=r"Directory \['tcp://"):
        directory.lookup()
    with pytest.raises(Closed, match="Directory"):
        directory.wait("a", timeout=1)
    with pytest.raises(Closed, match="Directory"):
        directory.watch(print)
    with pytest.raises(Closed, match="LogHandler svc"):
        handler.wait_for_subscribers(1, timeout=1)  # it used to wait forever


@pytest.mark.timeout(20)
def test_a_directory_wait_ends_with_closed_when_the_directory_closes() -> None:
    with Directory(bind=LOCAL) as directory:
        outcome: list[BaseException] = []
        waiting = threading.Thread(target=lambda: _capture(outcome, directory.wait, "never", None))
        waiting.start()
        directory.close()
        waiting.join(10)
    assert [type(e) for e in outcome] == [Closed]


def _capture(into: list[BaseException], call: object, *args: object) -> None:
    try:
        call(*args)  # type: ignore[operator]
    except BaseException as exc:
        into.append(exc)


@pytest.mark.timeout(20)
def test_timeout_none_waits_without_limit_and_zero_looks_once() -> None:
    with Publisher(LOCAL) as pub:
        with pytest.raises(RequestTimeout, match="only 0 of 1"):
            pub.wait_for_subscribers(1, timeout=0)
        with Subscriber(pub.endpoint, ["t"]) as sub:
            assert pub.wait_for_subscribers(1, timeout=None) == 1
            with pytest.raises(RequestTimeout):
                sub.recv(timeout=0)
            pub.publish("t", "x")
            assert sub.recv(timeout=None).body == "x"
    with Directory(bind=LOCAL) as directory, Presence(directory.endpoint) as presence:
        assert presence.wait_for_directories(1, timeout=None) == 1
        with pytest.raises(RequestTimeout, match="'svc'"):
            directory.wait("svc", timeout=0)
        presence.announce("svc", "tcp://h:1")
        assert directory.wait("svc", timeout=None).endpoint == "tcp://h:1"


@pytest.mark.timeout(30)
async def test_async_classes_aclose_and_closed_after() -> None:
    async with zasync.Directory(bind=LOCAL) as directory, zasync.Presence(directory.endpoint) as presence:
        async with zasync.Publisher(LOCAL) as pub, zasync.Subscriber(pub.endpoint, ["t"]) as sub:
            await pub.wait_for_subscribers(1, timeout=10)
            await pub.publish("t", 1)
            assert (await sub.recv(timeout=10)).body == 1
        assert pub.closed and sub.closed
        with pytest.raises(Closed, match="AsyncPublisher"):
            await pub.publish("t", 2)
        with pytest.raises(Closed, match="AsyncSubscriber"):
            await sub.recv(timeout=1)
        assert await presence.wait_for_directories(1, timeout=10) == 1
    assert presence.closed and directory.closed
    with pytest.raises(Closed, match="AsyncPresence"):
        await presence.wait_for_directories(1, timeout=1)
    with pytest.raises(Closed, match="AsyncDirectory"):
        await directory.wait("x", timeout=1)
    for obj in (presence, directory, pub, sub):
        await obj.aclose(drain=False)  # idempotent, either way


@pytest.mark.timeout(30)
async def test_waits_in_flight_raise_closed_on_aclose_and_cancel_cleanly() -> None:
    pub = zasync.Publisher(LOCAL)
    sub = zasync.Subscriber(pub.endpoint, ["t"])
    directory = zasync.Directory(bind=LOCAL)
    waits = [
        asyncio.create_task(sub.recv()),
        asyncio.create_task(pub.wait_for_subscribers(5, timeout=None)),
        asyncio.create_task(directory.wait("never", timeout=None)),
    ]
    cancelled = asyncio.create_task(sub.recv())
    await asyncio.sleep(0)  # let them start waiting (a yield to the loop, not a timed wait)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled  # a cancellation the task asked for stays a cancellation
    await sub.aclose()
    await pub.aclose(drain=False)
    await directory.aclose()
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
    assert [type(r) for r in results] == [Closed, Closed, Closed]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in Python 3.11")
@pytest.mark.timeout(30)
async def test_async_waits_fit_task_groups() -> None:
    async with zasync.Directory(bind=LOCAL) as directory, zasync.Presence(directory.endpoint) as presence:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
            found = group.create_task(directory.wait("svc", timeout=10))
            joined = group.create_task(presence.wait_for_directories(1, timeout=10))
            await joined
            presence.announce("svc", "tcp://h:9")
        assert found.result().endpoint == "tcp://h:9"


PUBLIC = [
    Publisher,
    Subscriber,
    Forwarder,
    Presence,
    Directory,
    LogHandler,
    zasync.Publisher,
    zasync.Subscriber,
    zasync.Presence,
    zasync.Directory,
]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_public_signatures_spell_out_every_parameter(cls: type) -> None:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    members: list[tuple[str, Callable[..., object]]] = [("__init__", cls)]
    for name, member in members + inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") and name != "__init__":
            continue
        params = inspect.signature(member).parameters.values()
        assert not [p for p in params if p.kind in variadic], f"{cls.__name__}.{name} hides its parameters"
    assert "options" in inspect.signature(cls).parameters
