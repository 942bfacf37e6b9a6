import os
import subprocess
import sys

import pytest
import zmq

from zmqkit import ConfigurationError, SocketOptions
from zmqkit.sockets import bind, connect, context, make_socket
from zmqkit.wire import ProtocolError, ProtocolId, pack_u64, split_envelope, unpack_u64


def test_bad_role_names_it() -> None:
    with pytest.raises(ConfigurationError, match="unknown socket role 'pusher'"):
        make_socket("pusher")


@pytest.mark.parametrize(
    ("option", "value"),
    [("sndhwm", -5), ("linger_ms", "1s"), ("max_msg_size", -2), ("immediate", "yes"), ("curve", "secret")],
)
def test_bad_option_raises_with_value(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        SocketOptions(**{option: value})  # type: ignore[arg-type]
    assert option in str(info.value) and repr(value) in str(info.value)


def test_with_spells_out_every_option() -> None:
    # An explicit signature: help() and IDEs list the options, and a misspelt one fails as any bad keyword does.
    with pytest.raises(TypeError, match="lingr"):
        SocketOptions().with_(lingr=5)  # type: ignore[call-arg]
    changed = SocketOptions().with_(sndhwm=5, immediate=True)
    assert (changed.sndhwm, changed.immediate, changed.rcvhwm) == (5, True, SocketOptions().rcvhwm)
    with pytest.raises(ConfigurationError, match="sndhwm=-3"):
        SocketOptions().with_(sndhwm=-3)


@pytest.mark.timeout(10)
def test_defaults_are_applied_by_role() -> None:
    opts = SocketOptions(sndhwm=123, rcvhwm=456, linger_ms=50, max_msg_size=4096)
    push = make_socket("push", opts)
    router = make_socket("router", opts)
    try:
        assert (push.sndhwm, push.rcvhwm, push.linger) == (123, 456, 50)
        assert push.getsockopt(zmq.MAXMSGSIZE) == 4096
        assert push.getsockopt(zmq.IMMEDIATE) == 1
        assert router.getsockopt(zmq.IMMEDIATE) == 0
        assert push.getsockopt(zmq.HEARTBEAT_IVL) == 2000
    finally:
        push.close(linger=0)
        router.close(linger=0)


@pytest.mark.timeout(20)
def test_oversized_message_drops_that_peer_and_others_are_served(raw_socket) -> None:  # type: ignore[no-untyped-def]
    pull = make_socket("pull", SocketOptions(max_msg_size=1000))
    try:
        endpoint = bind(pull, "tcp://127.0.0.1:0")
        big, small = raw_socket(zmq.PUSH), raw_socket(zmq.PUSH)
        big.connect(endpoint)
        small.connect(endpoint)
        big.send(b"x" * 5000)
        small.send(b"ok-1")
        got = []
        while len(got) < 1 and pull.poll(5000):
            got.append(pull.recv())
        assert got == [b"ok-1"]
        # The receiver keeps serving the well-behaved peer.
        small.send(b"ok-2")
        assert pull.poll(5000) and pull.recv() == b"ok-2"
        assert not pull.poll(200)  # the oversized message never arrives
    finally:
        pull.close(linger=0)


@pytest.mark.timeout(10)
def test_req_sends_again_after_giving_up_and_drops_the_late_reply(raw_socket) -> None:  # type: ignore[no-untyped-def]
    rep = raw_socket(zmq.REP)
    endpoint = bind(rep, "tcp://127.0.0.1:0")
    req = make_socket("req")
    try:
        connect(req, endpoint)
        req.send(b"first")
        assert rep.poll(5000) and rep.recv() == b"first"
        req.send(b"second")  # the caller gave up on "first": a plain REQ would raise EFSM here
        rep.send(b"late reply to first")  # reaches the REQ, which drops it: it is not for "second"
        assert rep.poll(5000) and rep.recv() == b"second"
        rep.send(b"reply to second")
        assert req.poll(5000) and req.recv() == b"reply to second"
    finally:
        req.close(linger=0)


@pytest.mark.timeout(10)
def test_close_with_peer_gone_returns_promptly() -> None:
    push = make_socket("push", SocketOptions(immediate=False))
    connect(push, "tcp://127.0.0.1:1")  # nothing listens there
    push.send(b"queued forever", zmq.NOBLOCK)
    push.close()  # bounded LINGER: returns even though the message can never leave
    assert push.closed


@pytest.mark.timeout(20)
def test_context_is_per_process_and_recreated_after_fork() -> None:
    code = (
        "import os, zmqkit.sockets as s\n"
        "parent = id(s.context())\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if id(s.context()) != parent and not s.context().closed else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    assert context() is context()
    result = subprocess.run([sys.executable, "-c", code], timeout=15, env={**os.environ})
    assert result.returncode == 0


def test_protocol_header() -> None:
    proto = ProtocolId(b"ZKT", 2)
    assert proto.header == b"ZKT\x02"
    proto.check(b"ZKT\x02")
    with pytest.raises(ProtocolError, match="unsupported ZKT version 1"):
        proto.check(b"ZKT\x01")
    with pytest.raises(ProtocolError, match="expected protocol header"):
        proto.check(b"GET")


def test_numbers_and_envelopes() -> None:
    assert unpack_u64(pack_u64(2**64 - 1)) == 2**64 - 1
    with pytest.raises(ProtocolError, match="8 bytes"):
        unpack_u64(b"\x00")
    assert split_envelope([b"id1", b"id2", b"", b"a", b"b"]) == ([b"id1", b"id2"], [b"a", b"b"])
    with pytest.raises(ProtocolError, match="delimiter"):
        split_envelope([b"id", b"body"])


def test_resolve_options_applies_curve_and_checks_type() -> None:
    from zmqkit import Curve, KeyPair
    from zmqkit.sockets import resolve_options

    curve = Curve.client(KeyPair.generate().public)
    opts = resolve_options(SocketOptions(sndhwm=7), curve, linger_ms=0)
    assert (opts.sndhwm, opts.linger_ms, opts.curve) == (7, 0, curve)
    assert resolve_options(None) == SocketOptions()
    with pytest.raises(ConfigurationError, match="bad options"):
        resolve_options({"sndhwm": 1})  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_attach_binds_then_connects_and_closes_on_error() -> None:
    from zmqkit.sockets import attach

    pull = make_socket("pull")
    push = make_socket("push")
    try:
        (bound,) = attach(pull, "tcp://127.0.0.1:0", None, "Worker")
        assert attach(push, None, [bound]) == [bound]
        push.send(b"x")
        assert pull.poll(5000) and pull.recv() == b"x"
    finally:
        pull.close(linger=0)
        push.close(linger=0)
    lonely = make_socket("pull")
    with pytest.raises(ConfigurationError, match="Worker needs at least one endpoint"):
        attach(lonely, None, None, "Worker")
    assert lonely.closed
    bad = make_socket("pull")
    with pytest.raises(ConfigurationError, match="tcp//x"):
        attach(bad, ["tcp//x"], None)
    assert bad.closed


@pytest.mark.timeout(30)
def test_a_process_may_open_more_sockets_than_libzmqs_default() -> None:
    # A request-reply client keeps a socket per server: libzmq's default of 1023 sockets per context is too few.
    resource = pytest.importorskip("resource")
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if files != resource.RLIM_INFINITY and files < 3000:
        pytest.skip(f"this process may open only {files} files")
    socks = []
    try:
        for _ in range(1100):
            socks.append(make_socket("dealer"))
    finally:
        for sock in socks:
            sock.close(linger=0)
