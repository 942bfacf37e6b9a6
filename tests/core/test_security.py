import contextlib
from pathlib import Path

import pytest
import zmq

from zmqkit import ConfigurationError, Curve, KeyPair, SocketOptions, generate_keys
from zmqkit.security import load_keys, load_public_key
from zmqkit.sockets import bind, connect, make_socket


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("server", "client", "stranger"):
        public, secret = generate_keys(name, tmp_path / "keys")
        paths[name] = public
        paths[name + "_secret"] = secret
    return paths


def _pair(server_curve: Curve, client_curve: Curve) -> tuple[zmq.Socket, zmq.Socket]:
    server = make_socket("rep", SocketOptions(curve=server_curve, linger_ms=0))
    client = make_socket("req", SocketOptions(curve=client_curve, linger_ms=0))
    connect(client, bind(server, "tcp://127.0.0.1:0"))
    return server, client


@pytest.mark.timeout(20)
def test_allowed_client_exchanges_messages(keys: dict[str, Path]) -> None:
    server, client = _pair(
        Curve.server(keys["server_secret"], allow=[keys["client"]]),
        Curve.client(keys["server"], keys["client_secret"]),
    )
    try:
        client.send(b"ping")
        assert server.poll(5000), "allowed client got nothing through"
        assert server.recv() == b"ping"
        server.send(b"pong")
        assert client.poll(5000) and client.recv() == b"pong"
    finally:
        server.close()
        client.close()


@pytest.mark.timeout(20)
def test_client_not_allowed_gets_nothing_through_and_server_keeps_running(keys: dict[str, Path]) -> None:
    server_curve = Curve.server(keys["server_secret"], allow=[keys["client"]])
    server, stranger = _pair(server_curve, Curve.client(keys["server"], keys["stranger_secret"]))
    friend = make_socket("req", SocketOptions(curve=Curve.client(keys["server"], keys["client_secret"])))
    try:
        # The refused handshake may already have torn down the stranger's pipe: then the send is refused at
        # once (Again) instead of queued; either way nothing may come through.
        with contextlib.suppress(zmq.Again):
            stranger.send(b"let me in", zmq.NOBLOCK)
        connect(friend, server.last_endpoint.decode())
        friend.send(b"hello")
        assert server.poll(5000)
        assert server.recv() == b"hello"  # only the allowed client's message arrives
        server.send(b"welcome")
        assert friend.poll(5000) and friend.recv() == b"welcome"
        assert not server.poll(300)
    finally:
        friend.close(linger=0)
        server.close()
        stranger.close()


@pytest.mark.timeout(20)
def test_allow_any_and_directory_of_keys(keys: dict[str, Path]) -> None:
    folder = keys["client"].parent
    for allow in ("*", [folder]):
        server, client = _pair(
            Curve.server(keys["server_secret"], allow=allow),
            Curve.client(keys["server"], keys["stranger_secret"]),
        )
        try:
            client.send(b"x")
            assert server.poll(5000) and server.recv() == b"x"
        finally:
            server.close()
            client.close()


@pytest.mark.timeout(20)
def test_plain_client_cannot_talk_to_curve_server(keys: dict[str, Path], raw_socket) -> None:  # type: ignore[no-untyped-def]
    server = make_socket("rep", SocketOptions(curve=Curve.server(keys["server_secret"], allow="*")))
    try:
        plain = raw_socket(zmq.REQ)
        plain.connect(bind(server, "tcp://127.0.0.1:0"))
        plain.send(b"no curve")
        assert not server.poll(500)
    finally:
        server.close()


def test_server_must_say_who_is_allowed(keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="allow="):
        Curve.server(keys["server_secret"])


def test_key_loading_errors(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no secret key"):
        load_keys(keys["server"])
    with pytest.raises(ConfigurationError, match="missing"):
        load_keys(tmp_path / "missing.key_secret")
    with pytest.raises(ConfigurationError, match="bad public key 'short'"):
        load_public_key("short")
    pair = KeyPair.generate()
    assert load_public_key(pair.public.decode()) == pair.public
    assert "hidden" in repr(pair) and pair.secret is not None and pair.secret.decode() not in repr(pair)
