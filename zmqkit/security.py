"""CURVE security: key pairs as zmq.auth certificate files, and ``Curve`` settings applied by the socket factory.

Servers authenticate clients through ZAP (``zmq.auth``): one thread authenticator per process serves every
socket, sync and asyncio alike, because asyncio sockets share the process context (see ``sockets.py``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .errors import ConfigurationError

__all__ = ["Curve", "KeyPair", "generate_keys", "load_keys", "load_public_key", "ALLOW_ANY"]

ALLOW_ANY = "*"


@dataclass(frozen=True, repr=False)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 ASCII bytes each); ``secret`` is None for a public-only cert."""

    public: bytes
    secret: bytes | None = None

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.decode()!r}, secret={'<hidden>' if self.secret else None})"

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


def generate_keys(name: str, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory`` (zmq.auth format).

    An existing pair is kept unless ``force``: a new secret for a server locks out every client that trusts it.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigurationError(f"bad key name {name!r}: use a plain file name such as 'server'")
    folder = Path(directory)
    existing = [str(p) for p in (folder / f"{name}.key", folder / f"{name}.key_secret") if p.exists()]
    if existing and not force:
        raise ConfigurationError(
            f"key pair {name!r} exists ({', '.join(existing)}): not overwritten; pass --force (force=True) to"
            " replace it, which locks out every peer that trusts the old key"
        )
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def _z85_key(value: bytes | str, what: str) -> bytes | None:
    raw = value.encode() if isinstance(value, str) else value
    if isinstance(raw, bytes) and len(raw) == 40:
        try:
            z85.decode(raw)
        except (ValueError, KeyError):
            raise ConfigurationError(f"bad {what} {value!r}: not a Z85-encoded CURVE key") from None
        return raw
    if isinstance(raw, bytes) and len(raw) == 32:
        return z85.encode(raw)
    return None


def _load_cert(path: str | os.PathLike[str], what: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load {what} from {str(path)!r}: {exc}") from None


def load_keys(source: KeyPair | str | os.PathLike[str]) -> KeyPair:
    """A key pair from a KeyPair or a ``NAME.key_secret`` certificate file."""
    if isinstance(source, KeyPair):
        pair = source
    else:
        public, secret = _load_cert(source, "key pair")
        pair = KeyPair(public, secret)
    if not pair.secret:
        raise ConfigurationError(f"key pair {source!r} has no secret key: pass the NAME.key_secret file")
    return pair


def load_public_key(source: KeyPair | bytes | str | os.PathLike[str]) -> bytes:
    """A Z85 public key from a key, a KeyPair, or a certificate file."""
    if isinstance(source, KeyPair):
        return source.public
    if isinstance(source, (bytes, str)):
        key = _z85_key(source, "public key")
        if key is not None:
            return key
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        return _load_cert(source, "public key")[0]
    raise ConfigurationError(f"bad public key {source!r}: expected a 40-char Z85 key or a certificate file")


def _allowed_keys(allow: Iterable[Any]) -> frozenset[bytes]:
    keys: set[bytes] = set()
    for item in allow:
        if isinstance(item, (str, os.PathLike)) and os.path.isdir(item):
            try:
                certs = zmq.auth.load_certificates(str(item))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"cannot load client keys from {str(item)!r}: {exc}") from None
            keys.update(certs)
        else:
            keys.add(load_public_key(item))
    return frozenset(keys)


@dataclass(frozen=True, repr=False)
class Curve:
    """CURVE settings for one side of a connection; pass as ``curve=`` to any zmqkit class.

    >>> server = Curve.server("keys/server.key_secret", allow=["keys/client.key"])
    >>> client = Curve.client(server_key="keys/server.key", keys="keys/client.key_secret")
    """

    keys: KeyPair
    server_key: bytes | None = None  # set on clients: the server they expect
    allowed: frozenset[bytes] | None = None  # servers: allowed client keys; None = any client with CURVE

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        allowed = "any" if self.allowed is None else f"{len(self.allowed)} keys"
        return f"<Curve {side} public={self.keys.public.decode()} allowed={allowed}>"

    @property
    def is_client(self) -> bool:
        return self.server_key is not None

    @classmethod
    def server(
        cls,
        keys: KeyPair | str | os.PathLike[str],
        *,
        allow: Iterable[Any] | str | None = None,
    ) -> Curve:
        """Server side: our key pair, and which clients may connect (keys, cert files, dirs or ``"*"``)."""
        pair = load_keys(keys)
        if allow is None:
            raise ConfigurationError("Curve.server needs allow=[client keys or cert dirs] or allow='*' (any client)")
        if isinstance(allow, str) and allow == ALLOW_ANY:
            return cls(pair, None, None)
        if isinstance(allow, (str, bytes, os.PathLike)):
            allow = [allow]
        return cls(pair, None, _allowed_keys(allow))

    @classmethod
    def client(
        cls,
        server_key: KeyPair | bytes | str | os.PathLike[str],
        keys: KeyPair | str | os.PathLike[str] | None = None,
    ) -> Curve:
        """Client side: the server's public key, and our key pair (a fresh one if None)."""
        pair = load_keys(keys) if keys is not None else KeyPair.generate()
        return cls(pair, load_public_key(server_key), None)

    def apply(self, sock: zmq.Socket) -> None:
        """Set the CURVE options on ``sock`` (before bind/connect); servers also get a ZAP domain."""
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        if self.server_key is not None:
            sock.curve_serverkey = self.server_key
            return
        sock.zap_domain = _ZAP.register(sock.context, self.allowed).encode()
        sock.curve_server = True


class _ZapRegistry:
    """One ZAP authenticator per process; each allowed-key set is a ZAP domain of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auth: ThreadAuthenticator | None = None
        self._pid = -1
        self._domains: dict[str, frozenset[bytes] | None] = {}

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = self._domains.get(domain, frozenset())
        return allowed is None or client_key in allowed

    def register(self, ctx: zmq.Context, allowed: frozenset[bytes] | None) -> str:
        digest = "any" if allowed is None else hashlib.sha1(b"".join(sorted(allowed))).hexdigest()[:16]
        domain = f"zmqkit-{digest}"
        with self._lock:
            if self._auth is None or self._pid != os.getpid():
                base: zmq.Context = zmq.Context.shadow(ctx.underlying)
                self._auth = ThreadAuthenticator(base)
                self._auth.start()
                self._domains = {}
                self._pid = os.getpid()
            if domain not in self._domains:
                self._domains[domain] = allowed
                self._auth.configure_curve_callback(domain, credentials_provider=self)
        return domain


_ZAP = _ZapRegistry()
