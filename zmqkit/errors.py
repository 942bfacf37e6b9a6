"""The zmqkit error tree: one root, split by who is to blame."""

from __future__ import annotations

__all__ = [
    "ZmqkitError",
    "ConfigurationError",
    "RequestTimeout",
    "RemoteError",
    "ProtocolError",
    "Unavailable",
    "NodeUnavailable",
    "AuthenticationFailed",
    "Closed",
    "DataError",
]


class ZmqkitError(Exception):
    """Root of every error zmqkit raises."""


class ConfigurationError(ZmqkitError, ValueError):
    """A bad argument, option or endpoint from the caller; raised at once, naming the bad value."""


class RequestTimeout(ZmqkitError, TimeoutError):
    """No answer arrived before the deadline."""


class RemoteError(ZmqkitError):
    """The peer ran the request and it failed there.

    ``remote_type``, ``message`` and ``remote_traceback`` are what the peer reported.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.remote_type, self.message, self.remote_traceback))


class ProtocolError(ZmqkitError):
    """A peer sent frames that do not follow the wire format."""


class Unavailable(ZmqkitError):
    """No peer that could serve the call is reachable right now."""


class NodeUnavailable(Unavailable):
    """A cache node (or every node a key could live on) is not answering."""


class AuthenticationFailed(ZmqkitError):
    """A peer refused our CURVE handshake (not allowed, wrong server key, or one side without CURVE).

    ``endpoint`` is the peer that refused and ``reason`` what libzmq's socket monitor said about it.
    """

    def __init__(self, endpoint: str, reason: str, *, unsure: bool = False) -> None:
        """``unsure``: the peer only closed the connection during the handshake, which a server that requires
        CURVE does to a side without keys, and so does a port that is not ZeroMQ at all."""
        if unsure:
            message = (
                f"authentication failed, or not a ZeroMQ server: {endpoint} closed the connection during the"
                f" handshake ({reason}); if it requires CURVE, give --curve-server and --curve-secret (or curve="
                " in code); otherwise check the address"
            )
        else:
            message = (
                f"authentication failed: {endpoint} refused our CURVE handshake: {reason}; check --curve-server /"
                " --curve-secret / the server's --curve-allow (or the curve= keys in code)"
            )
        super().__init__(message)
        self.endpoint = endpoint
        self.reason = reason
        self.unsure = unsure

    def __reduce__(self) -> tuple[object, ...]:
        return (_authentication_failed, (self.endpoint, self.reason, self.unsure))


class Closed(ZmqkitError, RuntimeError):
    """The object was used after ``close()`` (one error for every zmqkit class that owns sockets)."""


class DataError(ZmqkitError, ValueError):
    """Data refused at run time, not a mistake in the code: a value too large, a stored value that is not a number."""


def _authentication_failed(endpoint: str, reason: str, unsure: bool) -> AuthenticationFailed:
    """Unpickle an AuthenticationFailed (its keyword-only ``unsure`` does not fit ``__reduce__``'s arguments)."""
    return AuthenticationFailed(endpoint, reason, unsure=unsure)
