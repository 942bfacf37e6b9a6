"""Helpers for tests that use real sockets: free ports, fixtures that close everything they made, and hosts made
of Linux network namespaces.

In a conftest.py: ``pytest_plugins = ["zmqkit.testing"]`` gives the fixtures ``zmq_ctx``, ``raw_socket``,
``tcp_endpoint``, ``zmqkit_leak_check``, ``cache_cluster`` (local cache nodes for your tests) and ``hosts``.
The module imports without pytest (production code never imports it; a script may use ``Hosts``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import zmq

from .endpoints import free_port as free_port
from .endpoints import free_tcp_endpoint as free_tcp_endpoint
from .errors import Closed, ConfigurationError, ZmqkitError
from .sockets import open_sockets

if TYPE_CHECKING:
    import pytest

    from .cache import CacheClient, CacheNode

__all__ = [
    "wait_until",
    "Hosts",
    "Host",
    "HostProcess",
    "NamespaceError",
    "netns_unavailable",
    "hosts",
    "free_port",
    "free_tcp_endpoint",
    "terminate",
    "zmq_ctx",
    "raw_socket",
    "tcp_endpoint",
    "zmqkit_leak_check",
    "CacheCluster",
    "cache_cluster",
]


def wait_until(condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.005) -> None:
    """Poll ``condition`` until it is true; after ``timeout`` seconds fail the test saying ``what`` never happened.

    For state another thread or process changes with no event to wait on; a regression then fails here with a
    clear message, not at pytest-timeout a minute later.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            _fail(f"within {timeout}s: {what}")
        time.sleep(interval)


def _fail(message: str) -> NoReturn:
    """Fail the running test with ``message`` and no traceback; a plain AssertionError where pytest is absent."""
    try:
        import pytest
    except ImportError:
        raise AssertionError(message) from None
    pytest.fail(message, pytrace=False)


_F = TypeVar("_F", bound=Callable[..., Any])


def _fixture(function: _F) -> _F:
    """``pytest.fixture`` where pytest is installed; without it the fixtures stay plain functions, unused."""
    try:
        import pytest
    except ImportError:
        return function
    return pytest.fixture(function)  # type: ignore[return-value]


def terminate(ctx: zmq.Context, timeout: float = 5.0, *, close_sockets: bool = False) -> None:
    """Terminate ``ctx``, raising TimeoutError instead of hanging; ``close_sockets`` closes leftovers first."""
    done = threading.Event()

    def _term() -> None:
        # destroy() closes every socket still open with linger 0, then terminates.
        ctx.destroy(linger=0) if close_sockets else ctx.term()
        done.set()

    threading.Thread(target=_term, daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"zmq context did not terminate within {timeout}s: a socket was left open")


@_fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    """A fresh zmq context for raw peer sockets; its sockets closed with linger 0, terminated under a timeout."""
    ctx = zmq.Context()
    yield ctx
    terminate(ctx, close_sockets=True)


@_fixture
def raw_socket(zmq_ctx: zmq.Context) -> Iterator[Callable[..., zmq.Socket]]:
    """Make plain pyzmq sockets (the foreign peer in interop tests): ``raw_socket(zmq.DEALER)``."""
    made: list[zmq.Socket] = []

    def make(kind: int, **options: Any) -> zmq.Socket:
        sock = zmq_ctx.socket(kind)
        sock.linger = 0
        for name, value in options.items():
            setattr(sock, name, value)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@_fixture
def tcp_endpoint() -> str:
    """A loopback TCP endpoint on a free port."""
    return free_tcp_endpoint()


@_fixture
def zmqkit_leak_check() -> Iterator[None]:
    """Fail the test if it leaves a socket made by zmqkit open (they are closed with linger 0 either way)."""
    before = set(map(id, open_sockets()))
    yield
    leaked = [s for s in open_sockets() if id(s) not in before]
    for sock in leaked:
        sock.close(linger=0)
    if leaked:
        kinds = ", ".join(sorted({zmq.SocketType(int(s.type)).name for s in leaked}))
        _fail(f"test left {len(leaked)} zmqkit socket(s) open: {kinds}")


class CacheCluster:
    """Cache nodes serving in background threads on free loopback ports, and clients closed with them.

    >>> def test_it(cache_cluster):
    ...     cache = cache_cluster.client()
    ...     cache["k"] = "v"
    """

    def __init__(self, size: int = 3, **node_options: Any) -> None:
        from .cache import CacheNode

        self.nodes: list[CacheNode] = []
        self._clients: list[Any] = []
        try:
            for _ in range(size):
                node = CacheNode("tcp://127.0.0.1:0", **node_options)
                self.nodes.append(node)
                node.start()
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [str(node.endpoint) for node in self.nodes]

    def client(self, **options: Any) -> CacheClient:
        """A CacheClient over every node (closed with the cluster); ``options`` go to CacheClient."""
        from .cache import CacheClient

        client = CacheClient(self.endpoints, **options)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for node in self.nodes:
            node.stop()


@_fixture
def cache_cluster(request: pytest.FixtureRequest) -> Iterator[CacheCluster]:
    """Three local cache nodes (``@pytest.mark.parametrize("cache_cluster", [N], indirect=True)`` for N)."""
    cluster = CacheCluster(getattr(request, "param", 3))
    try:
        yield cluster
    finally:
        cluster.close()


# Hosts out of Linux network namespaces.
#
# A "switch" namespace holds a bridge; each host is a namespace whose eth0 is one end of a veth pair, the other
# end a port of that bridge. Every link is created directly inside the namespaces, so nothing appears in the root
# namespace and no traffic leaves them. Namespace names carry the creating process's pid, so a run that was killed
# before it could clean up is reaped by the next one.

_STALE = re.compile(r"^zkt-(\d+)-[0-9a-f]+-")
_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")


class NamespaceError(ZmqkitError):
    """An ``ip`` command of the host harness failed; the message has the command and ip's own error."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; with ``check``, a failure raises NamespaceError."""
    command = "ip " + " ".join(args)
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NamespaceError(f"{command!r}: the 'ip' command (iproute2) is not installed") from None
    if check and done.returncode != 0:
        raise NamespaceError(f"{command!r} failed: {done.stderr.strip() or f'exit code {done.returncode}'}")
    return done


def _kill_namespace_pids(netns: str) -> None:
    """SIGKILL every process still inside ``netns`` (ones that left their process group, too)."""
    for pid in _ip("netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _reap_stale() -> None:
    """Delete the namespaces of harness runs whose process is gone (killed before its own cleanup ran)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = _STALE.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)
            continue  # that run is alive: its namespaces are its own
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_namespace_pids(name)
        _ip("netns", "del", name, check=False)


_availability: list[str | None] = []


def netns_unavailable() -> str | None:
    """Why hosts cannot be made here, or None when they can: found by trying once per process (a namespace, a
    bridge and a veth pair in it), not by guessing from the platform or the user id."""
    if not _availability:
        probe = f"zkt-{os.getpid()}-{secrets.token_hex(2)}-probe"
        reason = None
        try:
            _ip("netns", "add", probe)
            try:
                _ip("-n", probe, "link", "add", "br0", "type", "bridge")
                _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
            finally:
                _ip("netns", "del", probe, check=False)
        except (NamespaceError, OSError) as exc:
            reason = f"network namespaces cannot be made here (needs root or CAP_NET_ADMIN and iproute2): {exc}"
        _availability.append(reason)
    return _availability[0]


class HostProcess(subprocess.Popen[str]):
    """A process running in a host, in its own process group; its stdout lines can be awaited.

    A background thread reads stdout (when it is a pipe) into ``lines``, so a chatty child never blocks on a full
    pipe, and ``wait_line`` waits for a line without sleeping.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None,
        env: dict[str, str] | None,
        stdin: int | IO[Any] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
    ) -> None:
        # start_new_session: the process leads its own group, so kill_all reaches its children too, and a ^C
        # in the terminal reaches only the test process, whose cleanup then kills the group.
        super().__init__(
            list(argv), cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self._cursor = 0  # lines before it were already matched or passed over by wait_line
        self._eof = False
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        if self.stdout is not None:
            self._reader = threading.Thread(target=self._read, args=(self.stdout,), name=f"stdout {argv}", daemon=True)
            self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> str:
        """Wait for the next line starting with ``prefix`` and return the rest of it, stripped.

        Lines are taken in order: a later call waits for a line after this one. Fails the test at ``timeout``,
        or at once if the process closes its stdout first, showing its last lines.
        """
        if self._reader is None:
            raise ConfigurationError(f"wait_line({prefix!r}) needs the process's stdout to be a pipe (the default)")
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._changed.wait(left)
        if self._eof:
            try:
                status = f"exited with code {self.wait(timeout=5)}"
            except subprocess.TimeoutExpired:
                status = "closed its stdout"
        else:
            status = f"printed none within {timeout}s"
        tail = "\n".join(self.lines[-10:]) or "(nothing)"
        _fail(f"{self.args!r} {status} before a line starting with {prefix!r}; its last output:\n{tail}")

    def kill_group(self) -> None:
        """SIGKILL the process's whole group (its reaping is left to ``reap``)."""
        # Once reaped, its pid may belong to someone else; what is left of its group is killed by namespace.
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
                os.killpg(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Wait for the killed process and its stdout reader; close its pipes."""
        self.wait(timeout=10)
        if self._reader is not None:
            # EOF comes once every holder of the pipe is dead, grandchildren included.
            self._reader.join(timeout=5)
            if self._reader.is_alive():
                raise NamespaceError(f"{self.args!r}: its stdout is still held open by a process that survived")
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()


class Host:
    """One host: a network namespace with loopback and one address on the hosts' switch (made by Hosts.add).

    ``run`` and ``python`` start processes inside it; ``cut`` and ``heal`` take its link down and up.
    """

    def __init__(self, name: str, netns: str, address: str) -> None:
        self.name = name
        self.netns = netns
        self.address = address
        self._processes: list[HostProcess] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.netns}>"

    def endpoint(self, port: int) -> str:
        """``tcp://ADDRESS:PORT`` on this host's address."""
        return f"tcp://{self.address}:{port}"

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = None,
    ) -> HostProcess:
        """Start ``argv`` inside this host (``ip netns exec``); killed by ``kill_all`` or when the Hosts close.

        stdout is a pipe read by ``wait_line``; stderr goes where the test's own goes (pytest shows it on failure).
        ``PYTHONUNBUFFERED=1`` is added to the environment unless set, so a Python child's lines arrive at once.
        """
        env = dict(os.environ if env is None else env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        process = HostProcess(
            ["ip", "netns", "exec", self.netns, *argv], cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr
        )
        self._processes.append(process)
        return process

    def python(
        self,
        code_or_args: str | Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> HostProcess:
        """This Python (``sys.executable``) inside the host: a string is run as ``-c CODE``, a list as arguments.

        stdout is a pipe for ``wait_line``; for other streams, ``run([sys.executable, ...])``.
        """
        args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
        return self.run([sys.executable, *args], cwd=cwd, env=env, stdin=stdin)

    def cut(self) -> None:
        """Take the host's link down: nothing reaches it and it reaches no other host until ``heal``.

        Its own sends to other hosts fail at once (no route); theirs to it are dropped without an answer, as when
        a cable is pulled. Processes and addresses stay.
        """
        _ip("-n", self.netns, "link", "set", "eth0", "down")

    def heal(self) -> None:
        """Bring the host's link back up (its route returns with it)."""
        _ip("-n", self.netns, "link", "set", "eth0", "up")

    def kill_all(self) -> None:
        """SIGKILL every process started in this host (their whole groups) and any other still inside it."""
        processes, self._processes = self._processes, []
        for process in processes:
            process.kill_group()
        _kill_namespace_pids(self.netns)
        for process in processes:
            process.reap()


class Hosts:
    """Hosts made of Linux network namespaces on a private switch; every process, link and namespace removed on
    close, even when the test fails. Needs root (or CAP_NET_ADMIN) and iproute2; see ``netns_unavailable``.

    The calling process stays in its own namespace and cannot reach the hosts: run every peer inside a host.

    >>> with Hosts(2) as hosts:
    ...     a, b = hosts
    ...     server = a.python(["server.py", a.endpoint(5555)])
    ...     server.wait_line("READY", timeout=10)
    """

    def __init__(self, count: int = 2) -> None:
        if not isinstance(count, int) or not 0 <= count <= 254:
            raise ConfigurationError(f"Hosts count must be 0..254, got {count!r}")
        _reap_stale()
        # A random token keeps parallel runs apart; a random /24 keeps their addresses apart in logs and captures
        # (their traffic never meets: each run has its own switch).
        self._prefix = f"zkt-{os.getpid()}-{secrets.token_hex(2)}"
        self._subnet = f"10.77.{secrets.randbelow(256)}"
        self._switch = f"{self._prefix}-sw"
        self._hosts: list[Host] = []
        self._closed = False
        try:
            _ip("netns", "add", self._switch)
            _ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._switch, "link", "set", "br0", "up")
            for index in range(count):
                self.add(f"h{index + 1}")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self._hosts))

    def __len__(self) -> int:
        return len(self._hosts)

    def __getitem__(self, key: int | str) -> Host:
        """A host by position or by name."""
        if isinstance(key, int):
            return self._hosts[key]
        for host in self._hosts:
            if host.name == key:
                return host
        raise KeyError(key)

    def add(self, name: str | None = None) -> Host:
        """Make one more host (named ``hN`` by default) with the next address of the subnet, and return it."""
        if self._closed:
            raise Closed("Hosts are closed")
        index = len(self._hosts) + 1
        name = f"h{index}" if name is None else name
        if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
            raise ConfigurationError(f"host name must be 1-16 of a-z, 0-9, '_', '-', got {name!r}")
        if any(host.name == name for host in self._hosts):
            raise ConfigurationError(f"host name {name!r} is already taken")
        if index > 254:
            raise ConfigurationError(f"no address left for host {name!r}: 254 hosts at most")
        host = Host(name, f"{self._prefix}-{name}", f"{self._subnet}.{index}")
        _ip("netns", "add", host.netns)
        self._hosts.append(host)  # from here close() deletes it, even if the rest fails
        port = f"p{index}"  # the switch's end of the pair, inside the switch namespace
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", self._switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("-n", self._switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        """Kill every process in every host, then delete the hosts and the switch; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for host in reversed(self._hosts):
            try:
                host.kill_all()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")
            _ip("netns", "del", host.netns, check=False)
        _ip("netns", "del", self._switch, check=False)
        if errors:
            raise NamespaceError(f"could not kill every process: {'; '.join(errors)}")


@_fixture
def hosts() -> Iterator[Hosts]:
    """Two hosts, ``h1`` and ``h2`` (``hosts.add()`` for more), removed after the test; skips, with the reason,
    where network namespaces cannot be made."""
    import pytest

    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Hosts(2) as made:
        yield made
