"""Request-reply over real sockets: round trips, errors, plain pyzmq peers, failover, leave, idempotency, proxy."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import zmqkit.asyncio as zasync
from zmqkit import (
    AuthenticationFailed,
    ConfigurationError,
    Curve,
    KeyPair,
    RemoteError,
    RequestTimeout,
    SocketOptions,
    Unavailable,
)
from zmqkit.patterns import Client, Proxy, Server
from zmqkit.patterns.reqrep.protocol import (
    ERROR,
    HEADER,
    HELLO,
    READY,
    REPLY,
    REQUEST,
    message,
    parse_error,
    parse_message,
)
from zmqkit.testing import free_tcp_endpoint, wait_until


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """wait_until from a coroutine: the event loop keeps running (and the client reading) meanwhile."""
    await asyncio.to_thread(wait_until, condition, timeout, what)


LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers on free ports; every one is closed at the end."""
    made: list[Server] = []

    def start(handler: Callable[[Any], Any] = lambda body: body, **kw: Any) -> Server:
        server = Server(kw.pop("endpoints", LOCAL), handler, **kw).start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.close()


@pytest.mark.timeout(20)
def test_round_trip_with_codecs(servers: Callable[..., Server]) -> None:
    server = servers(lambda body: body.upper() if isinstance(body, (bytes, str)) else body)
    with Client(server.endpoints) as client:
        assert client.request(b"hello") == b"HELLO"
        assert client.request("text") == "TEXT"
        assert client.request({"n": [1, 2]}) == {"n": [1, 2]}
        assert client.servers() == {server.endpoints[0]: "ready"}


@pytest.mark.timeout(20)
def test_handler_exception_is_a_remote_error_and_the_server_keeps_serving(servers: Callable[..., Server]) -> None:
    def handler(body: bytes) -> bytes:
        if body == b"boom":
            raise ValueError("cannot resize to -1")
        return body

    server = servers(handler)
    with Client(server.endpoints) as client:
        with pytest.raises(RemoteError) as info:
            client.request(b"boom")
        assert info.value.remote_type == "ValueError"
        assert info.value.message == "cannot resize to -1"
        assert "Traceback" in info.value.remote_traceback and "handler" in info.value.remote_traceback
        assert client.request(b"still here") == b"still here"


@pytest.mark.timeout(20)
def test_a_result_the_codec_refuses_is_a_remote_error_naming_it(servers: Callable[..., Server]) -> None:
    server = servers(lambda body: 10**5000 if body == b"huge" else body)
    with Client(server.endpoints) as client:
        with pytest.raises(RemoteError) as info:
            client.request(b"huge")
        assert info.value.remote_type == "DataError"
        assert "over the 4300 decimal digits" in info.value.message
        assert client.request(b"still here") == b"still here"


@pytest.mark.timeout(20)
def test_plain_pyzmq_clients_speak_to_the_server(servers: Callable[..., Server], raw_socket: Any) -> None:
    server = servers(lambda body: b"<" + body + b">")
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(server.endpoints[0])
    dealer.send(HEADER + bytes([HELLO]))
    assert dealer.poll(5000)
    [ready] = dealer.recv_multipart()
    assert (ready[:4], ready[4], len(ready)) == (b"ZKR\x03", READY, 9)
    dealer.send(b"ZKR\x03Q\x01\x00\x02id" + b"payload")  # header, kind, attempt, codec, id length
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"ZKR\x03R\x01\x00\x02id<payload>"]
    # Frames before the message are envelope, echoed back: an empty delimiter (REQ-style) comes back too.
    dealer.send_multipart([b"", b"ZKR\x03Q\x01\x00\x02i2" + b"more"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"", b"ZKR\x03R\x01\x00\x02i2<more>"]
    # A REQ socket works too: it adds and strips the empty delimiter itself.
    req = raw_socket(zmq.REQ)
    req.connect(server.endpoints[0])
    req.send(message(REQUEST, 1, 0, b"r", b"text"))
    assert req.poll(5000)
    assert req.recv_multipart() == [message(REPLY, 1, 0, b"r", b"<text>")]


@pytest.mark.timeout(20)
def test_client_speaks_to_a_plain_pyzmq_server(raw_socket: Any) -> None:
    router = raw_socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"

    def serve() -> None:
        answered = 0
        while answered < 2 and router.poll(10_000):
            who, frame = router.recv_multipart()
            if frame == b"ZKR\x03H":
                router.send_multipart([who, b"ZKR\x03W\x00\x00\x00\x10"])  # ready, capacity 16
                continue
            _kind, attempt, codec, rid, payload = parse_message(frame)
            if payload == b"fail":
                # type and message after their u32 lengths, then the traceback (none here)
                error = struct.pack(">I", 8) + b"KeyError" + struct.pack(">I", 2) + b"no"
                router.send_multipart([who, message(ERROR, attempt, 0, rid, error)])
            else:
                router.send_multipart([who, message(REPLY, attempt, codec, rid, payload[::-1])])
            answered += 1

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Client(endpoint, timeout=5) as client:
            assert client.request(b"abc") == b"cba"
            with pytest.raises(RemoteError, match="KeyError: no"):
                client.request(b"fail")
    finally:
        thread.join(15)


@pytest.mark.timeout(30)
def test_timeout_then_nothing_is_stuck(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    stuck = servers(lambda body: release.wait(10) and body, concurrency=2)
    with Client(stuck.endpoints, timeout=0.5, retries=1) as client:
        with pytest.raises(RequestTimeout, match="2 attempt"):
            client.request(b"x")
        release.set()
        # Unlike a REQ socket after a timeout, the same client goes on working.
        assert client.request(b"y", timeout=5) == b"y"


@pytest.mark.timeout(30)
def test_failover_past_dead_and_closed_servers(servers: Callable[..., Server]) -> None:
    dead = free_tcp_endpoint()  # nothing ever listens here
    a, b = servers(), servers()
    with Client([dead, *a.endpoints, *b.endpoints], timeout=5) as client:
        for i in range(20):
            assert client.request(b"%d" % i) == b"%d" % i
        a.close()
        for i in range(20):
            assert client.request(b"%d" % i) == b"%d" % i
        assert client.servers()[dead] in ("connecting", "down")
    assert b.stats()["executed"] >= 20


@pytest.mark.timeout(20)
def test_no_server_at_all_is_unavailable() -> None:
    with Client(free_tcp_endpoint(), timeout=0.3) as client, pytest.raises(Unavailable, match=r"connecting|down"):
        client.request(b"x")


@pytest.mark.timeout(30)
def test_retry_of_a_slow_request_is_not_run_twice(servers: Callable[..., Server]) -> None:
    runs: list[bytes] = []
    first = threading.Event()

    def slow_once(body: bytes) -> bytes:
        runs.append(body)
        if len(runs) == 1:
            first.wait(0.6)  # longer than the attempt timeout: the client retries meanwhile
        return body + b"!"

    server = servers(slow_once, concurrency=2)
    with Client(server.endpoints, timeout=10, attempt_timeout=0.2, retries=20, backoff=0.05) as client:
        assert client.request(b"pay 10") == b"pay 10!"
    assert runs == [b"pay 10"]
    assert server.stats()["duplicates"] >= 1


@pytest.mark.timeout(20)
def test_a_retry_whose_reply_was_lost_is_answered_from_the_window(
    servers: Callable[..., Server], raw_socket: Any
) -> None:
    runs: list[bytes] = []
    server = servers(lambda body: runs.append(body) or body + b"!")  # the handler runs in the socket thread
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(server.endpoints[0])
    for attempt in (1, 2, 3):  # a retry whose first reply was lost on the way
        dealer.send(message(REQUEST, attempt, 0, b"rid-1", b"pay 10"))
        assert dealer.poll(5000)
        assert parse_message(dealer.recv()) == (REPLY, attempt, 0, b"rid-1", b"pay 10!")
    assert runs == [b"pay 10"]
    assert server.stats() == {"executed": 1, "duplicates": 2, "held": 0, "auth_failures": 0}


@pytest.mark.timeout(30)
def test_window_off_runs_a_retry_again(servers: Callable[..., Server]) -> None:
    runs: list[bytes] = []

    def slow_once(body: bytes) -> bytes:
        runs.append(body)
        if len(runs) == 1:
            threading.Event().wait(0.6)
        return body

    server = servers(slow_once, concurrency=2, idempotency_window=0)
    with Client(server.endpoints, timeout=10, attempt_timeout=0.2, retries=20, backoff=0.05) as client:
        assert client.request(b"x") == b"x"
    assert len(runs) >= 2


@pytest.mark.timeout(40)
async def test_graceful_leave_under_load_fails_no_call(servers: Callable[..., Server]) -> None:
    pool = [servers(lambda b: b, concurrency=2) for _ in range(3)]
    leaving = pool[1]
    done = 0
    errors: list[BaseException] = []
    async with zasync.Client([s.endpoints[0] for s in pool], timeout=10, attempt_timeout=5) as client:

        async def lane(k: int) -> None:
            nonlocal done
            for i in range(60):
                body = b"%d-%d" % (k, i)
                try:
                    assert await client.request(body) == body
                except Exception as exc:
                    errors.append(exc)
                done += 1

        lanes = asyncio.gather(*(lane(k) for k in range(20)))
        # The leaving server must be serving too (under load its connection may come up after the others').
        serving = lambda: done >= 300 and leaving.stats()["executed"] > 0  # noqa: E731
        await until(serving, "300 calls answered, some by the leaving server, before the leave")
        assert await asyncio.to_thread(leaving.leave, 10) is True  # drained, not cut short
        await lanes
    assert errors == []
    assert done == 1200
    assert leaving.stats()["executed"] > 0 and leaving.stats()["held"] == 0


@pytest.mark.timeout(30)
def test_sync_client_stops_using_a_server_that_left(servers: Callable[..., Server]) -> None:
    a, b = servers(), servers()
    with Client([*a.endpoints, *b.endpoints], timeout=5, attempt_timeout=3) as client:
        for _ in range(10):
            client.request(b"x")
        assert a.leave(5) is True  # the idle sync client is waited for only briefly
        before = b.stats()["executed"]
        for i in range(10):
            assert client.request(b"%d" % i) == b"%d" % i
        assert b.stats()["executed"] == before + 10
        assert client.servers()[a.endpoints[0]] in ("leaving", "down")


@pytest.mark.timeout(30)
async def test_many_in_flight_are_matched_by_request_id(servers: Callable[..., Server]) -> None:
    a, b = servers(lambda body: body * 2, concurrency=4), servers(lambda body: body * 2)
    async with zasync.Client([a.endpoints[0], b.endpoints[0]]) as client:
        bodies = [b"n%05d" % i for i in range(2000)]
        replies = await asyncio.gather(*(client.request(body) for body in bodies))
    assert replies == [body * 2 for body in bodies]


@pytest.mark.timeout(30)
async def test_slow_server_does_not_drag_the_others(servers: Callable[..., Server]) -> None:
    slow = servers(lambda body: threading.Event().wait(0.05) and body)
    fast = servers(lambda body: body)
    async with zasync.Client([slow.endpoints[0], fast.endpoints[0]], max_in_flight=4) as client:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> bytes:
            async with sem:
                return await client.request(b"%d" % i)  # type: ignore[no-any-return]

        await asyncio.gather(*(one(i) for i in range(300)))
    assert fast.stats()["executed"] > 4 * slow.stats()["executed"]


@pytest.fixture
def ctrl_c_interrupts() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, however pytest was started: a process started in the background
    (``nohup``, ``cmd &`` in a script) inherits SIGINT ignored, and Python then leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(20)
@pytest.mark.usefixtures("ctrl_c_interrupts")
def test_an_interrupted_sync_call_is_forgotten(servers: Callable[..., Server]) -> None:
    started, release = threading.Event(), threading.Event()

    def held(body: bytes) -> bytes:
        started.set()
        release.wait(10)
        return body

    server = servers(held, concurrency=2)
    with Client(server.endpoints, timeout=10) as client:
        release.set()
        assert client.request(b"warm") == b"warm"
        started.clear()
        release.clear()
        # Ctrl-C while the call waits for its reply: the server has the request.
        killer = threading.Thread(target=lambda: started.wait(10) and os.kill(os.getpid(), signal.SIGINT))
        killer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                client.request(b"held")
        finally:
            killer.join()
            release.set()
        proto = client._proto
        assert not proto.pending and all(peer.in_flight == 0 for peer in proto.peers.values())
        assert client.request(b"next") == b"next"  # the interrupted call's late reply is not taken for this one


@pytest.mark.timeout(20)
async def test_a_cancelled_async_call_is_forgotten_and_not_retried(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    release.set()
    server = servers(lambda body: release.wait(10) and body, concurrency=2)
    try:
        async with zasync.Client(server.endpoints, timeout=10, attempt_timeout=0.2) as client:
            assert await client.request(b"warm") == b"warm"
            release.clear()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.request(b"given up"), 0.05)
            # Forgotten at once: no place held on the server, no timer, no retry to come.
            proto = client._proto
            assert not proto.pending and not proto.completed
            assert all(peer.in_flight == 0 for peer in proto.peers.values())
    finally:
        release.set()


@pytest.mark.timeout(20)
async def test_async_short_timeout_fires_while_a_longer_call_waits(servers: Callable[..., Server]) -> None:
    # The asyncio client sets its loop timer only when the first deadline moves earlier: a later, shorter call
    # must move it.
    release = threading.Event()
    server = servers(lambda body: release.wait(10) and body, concurrency=2)
    async with zasync.Client(server.endpoints, timeout=10, retries=0) as client:
        slow = asyncio.ensure_future(client.request(b"slow"))
        await until(lambda: server.stats()["held"], "the server to hold the slow request")
        with pytest.raises(RequestTimeout):  # not asyncio's TimeoutError: the 0.3 s timer fired, not the 10 s one
            await asyncio.wait_for(client.request(b"quick", timeout=0.3), 5)
        release.set()
        assert await slow == b"slow"


@pytest.mark.timeout(20)
async def test_closing_the_async_client_fails_what_is_in_flight(servers: Callable[..., Server]) -> None:
    release = threading.Event()
    server = servers(lambda body: release.wait(5) and body, concurrency=2)
    client = zasync.Client(server.endpoints, timeout=10)
    task = asyncio.ensure_future(client.request(b"x"))
    await until(lambda: server.stats()["held"], "the server to hold the request")
    client.close()
    with pytest.raises(Unavailable, match="closed"):
        await task
    release.set()


@pytest.mark.timeout(30)
async def test_async_client_reads_the_server_a_request_was_moved_to(servers: Callable[..., Server]) -> None:
    # A send to a server that is gone moves the request to another server within the same flush. The send there
    # takes that socket's wake-up signal, so the client must look at it: a reply may be waiting already.
    release = threading.Event()
    b = servers(lambda body: (body != b"r1" or release.wait(10)) and body, concurrency=2)
    a_endpoint = free_tcp_endpoint()
    async with zasync.Client([b.endpoints[0], a_endpoint], timeout=10, retries=0) as client:
        first = asyncio.ensure_future(client.request(b"r1"))  # only b is up: it holds r1
        await until(lambda: b.stats()["held"], "b to hold r1")
        a = servers(endpoints=a_endpoint)
        await until(lambda: client.servers()[a_endpoint] == "ready", "a to be ready")
        a.close()
        to_a = client._socks[a_endpoint.encode()]
        await until(lambda: not to_a.poll(0, zmq.POLLOUT), "the client's connection to a to be gone")
        release.set()
        assert client._socks[b.endpoints[0].encode()].poll(5000)  # r1's reply is there; this took its signal
        second = client.request(b"r2")  # a has fewer in flight: r2 goes there first, then to b
        assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [b"r1", b"r2"]


@pytest.mark.timeout(60)
async def test_a_full_send_queue_is_not_taken_for_a_lost_server(servers: Callable[..., Server]) -> None:
    # Taking "queue full" for "server gone" would send what that server holds elsewhere, to be run twice.
    runs: collections.Counter[str] = collections.Counter()

    def handler(name: str, delay: float) -> Callable[[bytes], bytes]:
        def run(body: bytes) -> bytes:
            runs[name] += 1
            threading.Event().wait(delay)
            return b"ok"

        return run

    slow = servers(handler("slow", 0.01), options=SocketOptions(rcvhwm=5))
    fast = servers(handler("fast", 0.0))
    options = SocketOptions(sndhwm=20, immediate=False)  # the client keeps what it needs either way
    async with zasync.Client([slow.endpoints[0], fast.endpoints[0]], timeout=30, options=options) as client:
        body = b"x" * 200_000
        replies = await asyncio.gather(*(client.request(body) for _ in range(200)))
        assert replies == [b"ok"] * 200 and set(client.servers().values()) == {"ready"}
    assert runs["slow"] + runs["fast"] == 200


@pytest.mark.timeout(20)
def test_malformed_frames_get_an_error_or_are_dropped(servers: Callable[..., Server], raw_socket: Any) -> None:
    server = servers()
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(server.endpoints[0])
    for garbage in ([b"HTTP/1.1"], [b"", b"HTTP/1.1"], [HEADER + b"Q\x01\x00\x7f"], [HEADER], [b"ZKR\x02H"]):
        dealer.send_multipart(garbage)
    dealer.send(message(REQUEST, 1, 6, b"p", b"\x80\x04pickled"))  # pickle: refused
    errors = []
    while len(errors) < 6 and dealer.poll(3000):
        frame = dealer.recv_multipart()[-1]
        assert frame[:5] == HEADER + bytes([ERROR])
        errors.append(parse_error(parse_message(frame)[4]))
    assert len(errors) == 6 and all(e.remote_type == "ProtocolError" for e in errors[:5])
    assert "version 2" in errors[4].message and "pickle" in errors[5].message
    with Client(server.endpoints) as client:
        assert client.request(b"fine") == b"fine"


@pytest.mark.timeout(20)
def test_a_remote_peer_cannot_stop_the_server_with_a_nudge(servers: Callable[..., Server], raw_socket: Any) -> None:
    # The socket thread takes its commands through its ROUTER; only the exact 16-byte secret, from inproc, counts.
    server = servers()
    dealer = raw_socket(zmq.DEALER)
    dealer.connect(server.endpoints[0])
    guess = HEADER + b"X" + bytes(16)
    dealer.send(guess)  # from the network it is an unknown kind: answered with an error
    assert dealer.poll(3000) and dealer.recv()[:5] == HEADER + bytes([ERROR])
    with Client(server.endpoints) as client:
        assert client.request(b"still here") == b"still here"


@pytest.mark.timeout(30)
def test_proxy_gives_clients_one_address(servers: Callable[..., Server]) -> None:
    with Proxy(LOCAL, LOCAL) as proxy:
        backends = [servers(lambda body, k=k: b"%d:" % k + body, endpoints=None, connect=proxy.backend) for k in (1, 2)]
        with Client(proxy.frontend, timeout=5) as client:
            replies = {client.request(b"x%d" % i) for i in range(40)}
        assert {r.split(b":")[0] for r in replies} == {b"1", b"2"}
        assert sum(s.stats()["executed"] for s in backends) == 40


@pytest.mark.timeout(30)
def test_curve_encrypts_and_only_allowed_clients_are_served(servers: Callable[..., Server]) -> None:
    server_keys, friend, stranger = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    server = servers(curve=Curve.server(server_keys, allow=[friend.public]))
    with Client(server.endpoints, curve=Curve.client(server_keys.public, friend), timeout=5) as client:
        assert client.request(b"secret") == b"secret"
    stranger_curve = Curve.client(server_keys.public, stranger)
    with Client(server.endpoints, curve=stranger_curve, timeout=5) as client, pytest.raises(AuthenticationFailed):
        client.request(b"let me in")  # refused, and said so (issue 12), not "unavailable"


def test_bad_arguments_raise_at_once() -> None:
    with pytest.raises(ConfigurationError, match="'nowhere'"):
        Client("nowhere")
    with pytest.raises(ConfigurationError, match="concurrency=0"):
        Server(LOCAL, lambda b: b, concurrency=0)
    with pytest.raises(ConfigurationError, match="handler 42"):
        Server(LOCAL, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout=-1"):
        Client("tcp://127.0.0.1:5", timeout=-1)
    with pytest.raises(ConfigurationError, match=r"unknown codec 'yaml'"):
        Client("tcp://127.0.0.1:5", codec="yaml")
