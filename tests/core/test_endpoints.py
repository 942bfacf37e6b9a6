import pytest
import zmq

from zmqkit import ConfigurationError, parse_endpoint
from zmqkit.endpoints import parse_endpoints
from zmqkit.sockets import bind, connect, make_socket


@pytest.mark.parametrize(
    ("text", "transport", "host", "port"),
    [
        ("tcp://127.0.0.1:5555", "tcp", "127.0.0.1", 5555),
        ("tcp://localhost:1", "tcp", "localhost", 1),
        ("tcp://[::1]:7000", "tcp", "::1", 7000),
        ("ipc:///tmp/zk.sock", "ipc", "", None),
        ("inproc://jobs", "inproc", "", None),
    ],
)
def test_parse_good_endpoints(text: str, transport: str, host: str, port: int | None) -> None:
    ep = parse_endpoint(text)
    assert (ep.transport, ep.host, ep.port) == (transport, host, port)
    assert str(ep) == text


@pytest.mark.parametrize(
    "text",
    ["tcp//x", "tcp://x", "tcp://host:99999", "udp://1.2.3.4:5", "", "tcp://:80", "inproc://", "tcp://a b:1"],
)
def test_bad_endpoint_names_the_value(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_endpoint(text)
    assert repr(text) in str(info.value)


def test_bad_endpoint_message_says_what_is_expected() -> None:
    with pytest.raises(
        ConfigurationError, match=r"bad endpoint 'tcp//x': expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    ):
        parse_endpoint("tcp//x")


def test_wildcard_port_only_for_bind() -> None:
    assert parse_endpoint("tcp://127.0.0.1:0", for_bind=True).wildcard_port
    assert str(parse_endpoint("tcp://*:0", for_bind=True)) == "tcp://*:*"
    with pytest.raises(ConfigurationError, match="real port"):
        parse_endpoint("tcp://127.0.0.1:0")
    with pytest.raises(ConfigurationError, match="needs a host"):
        parse_endpoint("tcp://*:5000")


def test_parse_endpoints_accepts_list_and_comma_string() -> None:
    assert parse_endpoints("tcp://a:1, tcp://b:2") == ["tcp://a:1", "tcp://b:2"]
    assert parse_endpoints(["inproc://x"]) == ["inproc://x"]
    with pytest.raises(ConfigurationError):
        parse_endpoints([])


@pytest.mark.timeout(10)
def test_bind_port_zero_returns_real_endpoint() -> None:
    pull = make_socket("pull")
    push = make_socket("push")
    try:
        real = bind(pull, "tcp://127.0.0.1:0")
        port = parse_endpoint(real).port
        assert port is not None and port > 0
        connect(push, real)
        push.send(b"hello")
        assert pull.poll(5000)
        assert pull.recv() == b"hello"
    finally:
        push.close(linger=0)
        pull.close(linger=0)


@pytest.mark.timeout(10)
def test_bind_in_use_raises_with_endpoint() -> None:
    a = make_socket("pull")
    b = make_socket("pull")
    try:
        real = bind(a, "tcp://127.0.0.1:0")
        with pytest.raises(ConfigurationError, match=real.replace(".", r"\.")):
            bind(b, real)
    finally:
        a.close(linger=0)
        b.close(linger=0)
    assert zmq.PULL  # the sockets were real pyzmq sockets


def test_an_ipc_path_longer_than_a_unix_socket_holds_is_refused_before_any_socket() -> None:
    longest = "ipc:///tmp/" + "x" * (107 - len("/tmp/"))
    assert str(parse_endpoint(longest)) == longest
    with pytest.raises(ConfigurationError, match="an ipc path is at most 107 bytes"):
        parse_endpoint(longest + "x")
