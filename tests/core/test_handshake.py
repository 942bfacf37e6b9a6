"""A client refused by CURVE hears AuthenticationFailed naming the endpoint, at once, not Unavailable at timeout."""

import asyncio
import pickle
import time
from collections.abc import Iterator

import pytest

from zmqkit import AuthenticationFailed, Curve, KeyPair, ZmqkitError
from zmqkit.cache import CacheClient, CacheNode
from zmqkit.cache.aio import AsyncCacheClient
from zmqkit.patterns import Client, RpcClient, Server
from zmqkit.patterns.reqrep.aio import AsyncClient

SERVER, CLIENT, STRANGER = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
SERVER_CURVE = Curve.server(SERVER, allow=[CLIENT.public])
TIMEOUT = 5.0

REFUSED = {
    "not allowed": (Curve.client(SERVER.public, STRANGER), "not allowed"),
    "wrong server key": (Curve.client(STRANGER.public, CLIENT), "wrong server public key"),
    "no curve": (None, "requires CURVE"),
}


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    with CacheNode("tcp://127.0.0.1:0", curve=SERVER_CURVE) as n:
        n.start()
        yield str(n.endpoint)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with Server("tcp://127.0.0.1:0", lambda body: body, curve=SERVER_CURVE) as s:
        s.start()
        yield s.endpoints[0]


def _refused(call: object, endpoint: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as info:
        call()  # type: ignore[operator]
    assert time.monotonic() - started < TIMEOUT / 2, "refusal seen only at the timeout"
    assert isinstance(info.value, ZmqkitError) and info.value.endpoint == endpoint
    assert why in info.value.reason and "authentication failed" in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_cache_client_refused(node: str, case: str) -> None:
    curve, why = REFUSED[case]
    with CacheClient([node], timeout=TIMEOUT, curve=curve) as cache:
        _refused(lambda: cache.get("k"), node, why)
        _refused(lambda: cache.set("k", "v"), node, why)
        _refused(lambda: cache.get_many(["a", "b"]), node, why)
        _refused(cache.stats, node, why)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_async_cache_client_refused(node: str, case: str) -> None:
    curve, why = REFUSED[case]

    async def run() -> None:
        async with AsyncCacheClient([node], timeout=TIMEOUT, curve=curve) as cache:
            for call in (lambda: cache.get("k"), lambda: cache.set("k", "v"), cache.stats):
                started = time.monotonic()
                with pytest.raises(AuthenticationFailed) as info:
                    await call()
                assert time.monotonic() - started < TIMEOUT / 2 and why in info.value.reason

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_cache_client_with_the_right_keys_is_served(node: str) -> None:
    with CacheClient([node], timeout=TIMEOUT, curve=Curve.client(SERVER.public, CLIENT)) as cache:
        cache.set("k", "v")
        assert cache.get("k") == "v"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_reqrep_client_refused(server: str, case: str) -> None:
    curve, why = REFUSED[case]
    with Client(server, timeout=TIMEOUT, curve=curve) as client:
        _refused(lambda: client.request(b"hi"), server, why)
    with RpcClient(server, timeout=TIMEOUT, curve=curve) as rpc:
        _refused(rpc.methods, server, why)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_async_reqrep_client_refused(server: str, case: str) -> None:
    curve, why = REFUSED[case]

    async def run() -> None:
        async with AsyncClient(server, timeout=TIMEOUT, curve=curve) as client:
            started = time.monotonic()
            with pytest.raises(AuthenticationFailed) as info:
                await client.request(b"hi")
            assert time.monotonic() - started < TIMEOUT / 2 and why in info.value.reason

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_one_refusing_server_among_good_ones_does_not_fail_the_request(server: str) -> None:
    """A server that refuses us is skipped while another one serves: the refusal is no reason to give up."""
    with Server("tcp://127.0.0.1:0", lambda body: b"plain " + body) as plain:
        plain.start()
        with Client([server, plain.endpoints[0]], timeout=TIMEOUT) as client:
            assert client.request(b"hi") == b"plain hi"


@pytest.mark.timeout(30)
def test_reqrep_client_with_the_right_keys_is_served(server: str) -> None:
    with Client(server, timeout=TIMEOUT, curve=Curve.client(SERVER.public, CLIENT)) as client:
        assert client.request(b"hi") == b"hi"


@pytest.mark.timeout(30)
def test_a_handshake_after_its_watch_closed_never_stops_the_context() -> None:
    """libzmq sends monitor events from its I/O thread with a blocking send: an event for a watch whose reader
    is gone would stop every socket of the context. Closing the watch stops the monitor first."""
    import zmq

    from zmqkit.handshake import HandshakeWatch
    from zmqkit.sockets import bind, connect, make_socket
    from zmqkit.testing import terminate

    ctx = zmq.Context()  # its own context: a wedged I/O thread must not take the rest of the suite with it
    try:
        watched = make_socket("dealer", ctx=ctx)
        HandshakeWatch(watched).close()
        router = make_socket("router", ctx=ctx)
        connect(watched, bind(router, "tcp://127.0.0.1:0"))  # a handshake, after the watch closed
        pull = make_socket("pull", ctx=ctx)
        push = make_socket("push", ctx=ctx)
        connect(push, bind(pull, "tcp://127.0.0.1:0"))
        assert push.poll(5000, zmq.POLLOUT), "the context's I/O thread stopped: nothing connects"
        push.send(b"still moving")
        assert pull.poll(5000), "the context's I/O thread stopped: nothing arrives"
        assert pull.recv() == b"still moving"
        for sock in (watched, router, pull, push):
            sock.close(linger=0)
    finally:
        terminate(ctx, close_sockets=True)


@pytest.fixture
def not_zeromq() -> Iterator[str]:
    """A TCP port whose listener accepts and closes every connection: a wrong port, or a middlebox."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept_and_close() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.timeout(30)
def test_a_peer_that_hangs_up_during_the_handshake_is_named_as_curve_or_not_zeromq(not_zeromq: str) -> None:
    """Without CURVE, a peer that closes the connection during the handshake may be a CURVE server refusing us
    or no ZeroMQ server at all (libzmq reports both alike): the error says both, not "refused our CURVE"."""
    with CacheClient([not_zeromq], timeout=TIMEOUT) as cache, pytest.raises(AuthenticationFailed) as info:
        cache.get("k")
    assert info.value.unsure and "or not a ZeroMQ server" in str(info.value)
    assert "refused our CURVE handshake" not in str(info.value)
    with Client([not_zeromq], timeout=TIMEOUT) as client, pytest.raises(AuthenticationFailed) as info:
        client.request(b"x")
    assert info.value.unsure and info.value.endpoint == not_zeromq
    assert pickle.loads(pickle.dumps(info.value)).unsure  # it crosses processes whole


@pytest.mark.timeout(30)
def test_a_plain_client_of_a_curve_server_is_told_about_curve(node: str) -> None:
    """However libzmq reports it (a mechanism mismatch, or a hang-up), the message names CURVE."""
    with CacheClient([node], timeout=TIMEOUT) as cache, pytest.raises(AuthenticationFailed) as info:
        cache.get("k")
    assert "CURVE" in str(info.value) and "--curve-server" in str(info.value)
