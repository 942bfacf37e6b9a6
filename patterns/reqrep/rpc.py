"""RPC on request-reply: RpcServer exposes functions and objects, RpcClient calls them by attribute.

A call is one request whose body is ``[method, [args...], {kwargs...}]`` in the request's codec (JSON by
default, msgpack optional); the reply carries the result in the same codec, or an ERROR with the remote
exception's type, message and traceback (raised at the caller as RemoteError).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from zmqkit.codecs import CODEC_IDS, get_codec
from zmqkit.errors import ConfigurationError, ProtocolError

from .aio import AsyncClient, AsyncServer
from .protocol import ERROR, REPLY, Job, describe_exception, unpack
from .sync import Client, ClientCore, Server

__all__ = ["RpcServer", "AsyncRpcServer", "RpcClient", "AsyncRpcClient", "MethodNotFound", "METHODS"]

F = TypeVar("F", bound=Callable[..., Any])
METHODS = "_methods"  # the reserved call that lists what a server offers
_RPC_CODECS = ("json", "msgpack", "pickle")


class MethodNotFound(LookupError):
    """The server has no method by that name (reaches the caller as RemoteError 'MethodNotFound')."""


def _describe(fn: Callable[..., Any]) -> dict[str, str]:
    try:
        signature = str(inspect.signature(fn, eval_str=True))
    except Exception:  # annotations that do not evaluate: show them as written
        try:
            signature = str(inspect.signature(fn))
        except (TypeError, ValueError):
            signature = "(...)"
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return {"signature": signature, "doc": doc[0] if doc else ""}


class _Methods:
    """The RPC half both servers share: the method table, dispatch, and bodies in the caller's codec."""

    _methods: dict[str, Callable[..., Any]]
    _allow_pickle: bool

    def _setup_methods(self, codec_name: str) -> None:
        if codec_name not in _RPC_CODECS:
            raise ConfigurationError(f"bad RPC codec {codec_name!r}: expected one of {', '.join(_RPC_CODECS)}")
        self._methods = {}

    @overload
    def method(self, fn: F) -> F: ...
    @overload
    def method(self, fn: str) -> Callable[[F], F]: ...

    def method(self, fn: F | str) -> F | Callable[[F], F]:
        """Decorator: expose ``fn`` under its name (or ``@server.method("name")``)."""
        if isinstance(fn, str):
            return functools.partial(self._add, fn)
        return self._add(fn.__name__, fn)

    def register(self, obj: object, prefix: str = "") -> list[str]:
        """Expose every public method of ``obj`` as ``prefix + name``; return the names exposed."""
        names = [prefix + name for name, fn in inspect.getmembers(obj, callable) if not name.startswith("_")]
        for name in names:
            self._add(name, getattr(obj, name[len(prefix) :]))
        return names

    def _add(self, name: str, fn: F) -> F:
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise ConfigurationError(f"bad RPC method name {name!r}: a non-empty name not starting with '_'")
        if not callable(fn):
            raise ConfigurationError(f"bad RPC method {fn!r} for {name!r}: not callable")
        self._methods[name] = fn
        return fn

    def _call(self, request: Any) -> Any:
        """Run the method a request names: its result (a coroutine, for an ``async def`` method)."""
        if not (isinstance(request, list) and len(request) == 3 and isinstance(request[0], str)):
            raise TypeError(f"an RPC request is [method, args, kwargs], got {request!r:.100}")
        name, args, kwargs = request
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError(f"RPC args must be a list and kwargs a map, got {args!r:.60} and {kwargs!r:.60}")
        if name == METHODS:
            return {n: _describe(fn) for n, fn in sorted(self._methods.items())}
        fn = self._methods.get(name)
        if fn is None:
            offered = ", ".join(sorted(self._methods)) or "none"
            raise MethodNotFound(f"no method {name!r} on this server; it offers: {offered}")
        return fn(*args, **kwargs)

    def _request_of(self, job: Job) -> Any:
        if job.codec not in (CODEC_IDS["json"], CODEC_IDS["msgpack"], CODEC_IDS["pickle"]):
            raise TypeError(f"RPC bodies are json or msgpack, got codec id {job.codec}")
        return unpack(job.codec, job.body, allow_pickle=self._allow_pickle)

    @staticmethod
    def _reply_of(job: Job, result: Any) -> tuple[int, int, bytes]:
        # The reply goes back in the caller's codec, so a msgpack client gets msgpack even from a JSON default.
        name = next(n for n, i in CODEC_IDS.items() if i == job.codec)
        codec_id, payload = get_codec(name).pack(result)
        return REPLY, codec_id, payload


class RpcServer(_Methods, Server):
    """Expose functions (``@server.method``) and objects (``server.register(obj)``) to RpcClients.

    >>> server = RpcServer("tcp://*:5555", concurrency=8)
    >>> @server.method
    ... def resize(img: str, size: int) -> str: ...
    >>> server.register(Thumbnailer(), prefix="thumb.")   # its public methods, as thumb.<name>
    >>> server.start()
    """

    def __init__(self, endpoints: str | Sequence[str] | None, **kwargs: Any) -> None:
        kwargs.setdefault("codec", "json")
        super().__init__(endpoints, self._call, **kwargs)
        self._setup_methods(self._codec.name)

    def _execute(self, job: Job) -> tuple[int, int, bytes]:
        try:
            return self._reply_of(job, self._call(self._request_of(job)))
        except Exception as exc:
            return ERROR, 0, describe_exception(exc)


class AsyncRpcServer(_Methods, AsyncServer):
    """The asyncio RpcServer (``zmqkit.asyncio.RpcServer``): methods may be ``async def`` (awaited, up to
    ``concurrency`` at once) or plain functions (run inline in the event loop: keep them quick).

    >>> server = AsyncRpcServer("tcp://*:5555", concurrency=100)
    >>> @server.method
    ... async def fetch(url: str) -> str: ...
    >>> await server.start()
    """

    def __init__(self, endpoints: str | Sequence[str] | None, **kwargs: Any) -> None:
        kwargs.setdefault("codec", "json")
        super().__init__(endpoints, self._acall, **kwargs)
        self._setup_methods(self._codec.name)

    async def _acall(self, request: Any) -> Any:
        result = self._call(request)
        return await result if inspect.isawaitable(result) else result

    async def _answer(self, job: Job) -> tuple[int, int, bytes]:
        try:
            return self._reply_of(job, await self._acall(self._request_of(job)))
        except Exception as exc:
            return ERROR, 0, describe_exception(exc)


class _Api:
    """``client.api.name(*args, **kwargs)`` is ``client.call("name", *args, **kwargs)``."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        return functools.partial(self._call, name)


class RpcClient:
    """Call an RpcServer's methods: ``client.api.resize(img, 128)`` or ``client.call("resize", img, 128)``.

    >>> with RpcClient(["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"]) as client:
    ...     client.methods()              # {"resize": {"signature": "(img, size)", "doc": ...}, ...}
    ...     client.api.resize("a.png", 128)

    Remote exceptions raise RemoteError (``remote_type``, ``message``, ``remote_traceback``). Every Client
    option (timeout, retries, curve, ...) is accepted. ``timeout=`` on a call is the call's timeout.
    """

    _client_class: type[ClientCore] = Client

    def __init__(self, endpoints: str | Sequence[str], *, codec: str = "json", **kwargs: Any) -> None:
        if get_codec(codec).name not in _RPC_CODECS:
            raise ConfigurationError(f"bad RPC codec {codec!r}: expected one of {', '.join(_RPC_CODECS)}")
        self._client = self._client_class(endpoints, codec=codec, **kwargs)
        self.api = _Api(self.call)

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` remotely; its result."""
        reply = self._client.request([method, list(args), kwargs], timeout=timeout)  # type: ignore[attr-defined]
        return self._answer(method, reply)

    def _answer(self, method: str, reply: Any) -> Any:
        """``reply``, unless no RpcServer sent it (ProtocolError): a plain request-reply server, an echo, sends
        the call itself back, ``[method, [args], {kwargs}]``; and a method list is a map of maps."""
        echoed = type(reply) is list and len(reply) == 3 and reply[0] == method and type(reply[2]) is dict
        listed = method != METHODS or (type(reply) is dict and all(type(info) is dict for info in reply.values()))
        if listed and not echoed:
            return reply
        endpoints = self._client.endpoints
        where = endpoints[0] if len(endpoints) == 1 else "one of " + ", ".join(endpoints)
        raise ProtocolError(
            f"{where}: not an RPC server (its reply is not an RPC answer); call it with zmqkit req or a Client"
        )

    def methods(self, timeout: float | None = None) -> Any:
        """What the server offers: ``{name: {"signature": ..., "doc": ...}}``."""
        return self.call(METHODS, timeout=timeout)

    def close(self) -> None:
        self._client.close()  # type: ignore[attr-defined]

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRpcClient(RpcClient):
    """The asyncio RpcClient (``zmqkit.asyncio.RpcClient``): ``await client.api.resize(img, 128)``."""

    _client_class = AsyncClient

    async def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` remotely; await its result."""
        reply = await self._client.request([method, list(args), kwargs], timeout=timeout)  # type: ignore[attr-defined]
        return self._answer(method, reply)

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
