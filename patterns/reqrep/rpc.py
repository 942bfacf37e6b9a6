"""RPC on request-reply: RpcServer exposes functions and objects, RpcClient calls them by attribute.

A call is one request whose body is ``[method, [args...], {kwargs...}]`` in the request's codec (JSON by
default, msgpack optional); the reply carries the result in the same codec, or an ERROR with the remote
exception's type, message and traceback (raised at the caller as RemoteError).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar, overload

from zmqkit.checks import DEFAULT, Default
from zmqkit.codecs import CODEC_IDS, Codec, get_codec
from zmqkit.errors import ConfigurationError, ProtocolError
from zmqkit.security import Curve
from zmqkit.sockets import SocketOptions

from ..presence.fabric import FabricLike
from .aio import AsyncClient, AsyncServer
from .core import Value
from .protocol import ERROR, REPLY, Job, describe_exception, unpack
from .sync import Client, Server

__all__ = [
    "RpcServer",
    "AsyncRpcServer",
    "RpcClient",
    "AsyncRpcClient",
    "MethodNotFound",
    "METHODS",
    "RpcMethods",
    "RpcCaller",
]

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


def _check_codec(codec: str | Codec) -> None:
    name = get_codec(codec).name
    if name not in _RPC_CODECS:
        raise ConfigurationError(f"bad RPC codec {name!r}: expected one of {', '.join(_RPC_CODECS)}")


class RpcMethods:
    """The RPC half both servers share: the method table, dispatch, and bodies in the caller's codec."""

    _allow_pickle: bool

    def __init__(
        self,
        endpoints: str | Sequence[str] | None,
        *,
        concurrency: int = 1,
        max_queue: int = 1000,
        idempotency_window: int = 10_000,
        codec: str | Codec = "json",
        allow_pickle: bool = False,
        connect: str | Sequence[str] = (),
        announce: str | None = None,
        fabric: FabricLike = None,
        advertise: str | Sequence[str] | None = None,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Every Server option (``announce=`` a service name on a ``fabric``, too); ``codec`` is json (the
        default), msgpack or pickle (trusted peers only)."""
        _check_codec(codec)
        self._methods: dict[str, Callable[..., Any]] = {}
        super().__init__(  # type: ignore[call-arg]  # the server class this is mixed into
            endpoints,
            self._entry,
            concurrency=concurrency,
            max_queue=max_queue,
            idempotency_window=idempotency_window,
            codec=codec,
            allow_pickle=allow_pickle,
            connect=connect,
            announce=announce,
            fabric=fabric,
            advertise=advertise,
            curve=curve,
            options=options,
            clock=clock,
        )

    def _entry(self, request: Any) -> Any:
        """The handler the server class calls (the asyncio server's awaits a coroutine method)."""
        return self._call(request)

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


class RpcServer(RpcMethods, Server):
    """Expose functions (``@server.method``) and objects (``server.register(obj)``) to RpcClients.

    >>> server = RpcServer("tcp://*:5555", concurrency=8)
    >>> @server.method
    ... def resize(img: str, size: int) -> str: ...
    >>> server.register(Thumbnailer(), prefix="thumb.")   # its public methods, as thumb.<name>
    >>> server.start()
    """

    def _execute(self, job: Job) -> tuple[int, int, bytes]:
        try:
            return self._reply_of(job, self._call(self._request_of(job)))
        except Exception as exc:
            return ERROR, 0, describe_exception(exc)


class AsyncRpcServer(RpcMethods, AsyncServer):
    """The asyncio RpcServer (``zmqkit.asyncio.RpcServer``): methods may be ``async def`` (awaited, up to
    ``concurrency`` at once) or plain functions (run inline in the event loop: keep them quick).

    >>> server = AsyncRpcServer("tcp://*:5555", concurrency=100)
    >>> @server.method
    ... async def fetch(url: str) -> str: ...
    >>> await server.start()
    """

    async def _entry(self, request: Any) -> Any:
        result = self._call(request)
        return await result if inspect.isawaitable(result) else result

    async def _answer(self, job: Job) -> tuple[int, int, bytes]:
        try:
            return self._reply_of(job, await self._entry(self._request_of(job)))
        except Exception as exc:
            return ERROR, 0, describe_exception(exc)


class _Api:
    """``client.api.name(*args, **kwargs)`` is ``client.call("name", *args, **kwargs)``."""

    def __init__(self, call: Callable[..., Value]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Value]:
        if name.startswith("__"):
            raise AttributeError(name)
        return functools.partial(self._call, name)


class _AsyncApi:
    """``await client.api.name(*args, **kwargs)``: each call is a coroutine, so a forgotten await is flagged."""

    def __init__(self, call: Callable[..., Coroutine[Any, Any, Value]]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Value]]:
        if name.startswith("__"):
            raise AttributeError(name)
        return functools.partial(self._call, name)


class RpcCaller:
    """What both RPC clients share: the settings, the client underneath, and reading an answer."""

    _client: Client | AsyncClient

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        service: str | None = None,
        fabric: FabricLike = None,
        codec: str | Codec = "json",
        timeout: float | None = 5.0,
        attempt_timeout: float | None = None,
        retries: int = 2,
        backoff: float = 0.01,
        max_in_flight: int = 1000,
        allow_pickle: bool = False,
        curve: Curve | None = None,
        options: SocketOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Every Client option (``service=`` on a ``fabric`` instead of endpoints, too); ``codec`` is json (the
        default), msgpack or pickle (trusted peers only)."""
        _check_codec(codec)
        self._client = self._client_class()(
            endpoints,
            service=service,
            fabric=fabric,
            codec=codec,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            retries=retries,
            backoff=backoff,
            max_in_flight=max_in_flight,
            allow_pickle=allow_pickle,
            curve=curve,
            options=options,
            clock=clock,
        )
        self._setup()

    @property
    def endpoints(self) -> list[str]:
        """The servers' endpoints (for a client found by service: those it knows now)."""
        return self._client.endpoints

    def _setup(self) -> None:
        """The subclass's own state, made at the end of ``__init__``."""

    @staticmethod
    def _client_class() -> type[Client | AsyncClient]:
        raise NotImplementedError

    def servers(self) -> dict[str, str]:
        """Each server's endpoint and its state as this client sees it."""
        return self._client.servers()

    def _answer(self, method: str, reply: Value) -> Value:
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

    def close(self) -> None:
        """Close at once; calls after raise Closed. Idempotent."""
        self._client.close()


class RpcClient(RpcCaller):
    """Call an RpcServer's methods: ``client.api.resize(img, 128)`` or ``client.call("resize", img, 128)``.

    >>> with RpcClient(["tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"]) as client:
    ...     client.methods()              # {"resize": {"signature": "(img, size)", "doc": ...}, ...}
    ...     client.api.resize("a.png", 128)

    Remote exceptions raise RemoteError (``remote_type``, ``message``, ``remote_traceback``).
    """

    _client: Client

    def _setup(self) -> None:
        self.api = _Api(self.call)

    @staticmethod
    def _client_class() -> type[Client]:
        return Client

    def call(self, method: str, *args: Value, timeout: float | Default | None = DEFAULT, **kwargs: Value) -> Value:
        """Call ``method`` remotely with ``args`` and ``kwargs``; its result. ``timeout``: DEFAULT is the
        client's, None no limit."""
        return self._answer(method, self._client.request([method, list(args), kwargs], timeout=timeout))

    def methods(self, timeout: float | Default | None = DEFAULT) -> dict[str, dict[str, str]]:
        """What the server offers: ``{name: {"signature": ..., "doc": ...}}``."""
        listed: dict[str, dict[str, str]] = self.call(METHODS, timeout=timeout)
        return listed

    def wait_ready(self, timeout: float | None = 5.0) -> list[str]:
        """Wait until a server is ready (or ``timeout``); the endpoints that are (see Client.wait_ready)."""
        return self._client.wait_ready(timeout)

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRpcClient(RpcCaller):
    """The asyncio RpcClient (``zmqkit.asyncio.RpcClient``): ``await client.api.resize(img, 128)``.

    A cancelled call is forgotten by the client; the server that has it still runs it.
    """

    _client: AsyncClient

    def _setup(self) -> None:
        self.api = _AsyncApi(self.call)

    @staticmethod
    def _client_class() -> type[AsyncClient]:
        return AsyncClient

    async def call(
        self, method: str, *args: Value, timeout: float | Default | None = DEFAULT, **kwargs: Value
    ) -> Value:
        """Call ``method`` remotely with ``args`` and ``kwargs``; await its result. ``timeout``: DEFAULT is the
        client's, None no limit."""
        return self._answer(method, await self._client.request([method, list(args), kwargs], timeout=timeout))

    async def methods(self, timeout: float | Default | None = DEFAULT) -> dict[str, dict[str, str]]:
        """What the server offers: ``{name: {"signature": ..., "doc": ...}}``."""
        listed: dict[str, dict[str, str]] = await self.call(METHODS, timeout=timeout)
        return listed

    async def wait_ready(self, timeout: float | None = 5.0) -> list[str]:
        """Wait until a server is ready (or ``timeout``); the endpoints that are (see Client.wait_ready)."""
        return await self._client.wait_ready(timeout)

    async def aclose(self, *, drain: bool = True, timeout: float | None = 10.0) -> None:
        """Close; with ``drain``, first let the calls in flight finish (up to ``timeout``)."""
        await self._client.aclose(drain=drain, timeout=timeout)

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
