"""Request-reply found by name on loopback: servers announce a service, clients follow its instances (new ones
get traffic, ones in maintenance get none and no call fails, killed ones expire), sync and asyncio, RPC, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from zmqkit import ConfigurationError, Curve, Unavailable
from zmqkit.asyncio import Client as AsyncClient
from zmqkit.asyncio import RpcClient as AsyncRpcClient
from zmqkit.asyncio import Server as AsyncServer
from zmqkit.cli import main
from zmqkit.patterns import Client, Fabric, FabricServer, RpcClient, RpcServer, Server
from zmqkit.patterns.presence.fabric import Members
from zmqkit.testing import wait_until

FAST = 0.2  # heartbeat interval (seconds) where a test waits for expiry


@pytest.fixture
def fabric_server() -> Iterator[FabricServer]:
    with FabricServer("tcp://127.0.0.1:0") as server:
        yield server


@pytest.fixture
def fabric(fabric_server: FabricServer) -> Iterator[Fabric]:
    with Fabric([fabric_server.endpoint], interval=FAST) as member:
        yield member


def _named(name: str, seen: Counter[str]) -> Callable[[bytes], bytes]:
    """A handler that counts the requests it answers under ``name`` and answers with ``name``."""

    def handle(body: bytes) -> bytes:
        seen[name] += 1
        return name.encode()

    return handle


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """The servers a test starts, closed at its end whatever happens."""
    made: list[Server] = []
    yield made
    for server in made:
        server.close()


def _server(made: list[Server], name: str, seen: Counter[str], fabric: Fabric, service: str = "echo") -> Server:
    made.append(Server("tcp://127.0.0.1:0", _named(name, seen), announce=service, fabric=fabric))
    return made[-1].start()


@contextlib.contextmanager
def _running(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A subprocess (stdin and stdout piped), killed at the end if it still runs."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def _ready(client: Client, n: int) -> None:
    """Wait until ``client`` has ``n`` servers ready (its calls read what the servers say)."""

    def enough() -> bool:
        client.request(b"?")
        return sum(state == "ready" for state in client.servers().values()) >= n

    wait_until(enough, 5, f"{n} announced servers ready at the client")


def _state(client: Client, server: Server) -> str | None:
    """``server``'s state at ``client`` after a call (membership is applied between calls)."""
    client.request(b"?")
    return client.servers().get(server.endpoints[0])


@pytest.mark.timeout(60)
def test_servers_found_by_name_a_new_one_gets_traffic_and_one_that_leaves_gets_none(
    fabric: Fabric, servers: list[Server]
) -> None:
    seen: Counter[str] = Counter()
    one, two = _server(servers, "one", seen, fabric), _server(servers, "two", seen, fabric)
    with Client(service="echo", fabric=fabric, timeout=5) as client:
        _ready(client, 2)
        answers = Counter(client.request(b"x") for _ in range(200))
        assert sum(answers.values()) == 200 and set(answers) == {b"one", b"two"}, answers

        # A third instance: traffic within two heartbeat intervals, with no client restart.
        three = _server(servers, "three", seen, fabric)
        deadline = 2 * fabric.interval

        def three_served() -> bool:
            return client.request(b"x") == b"three" or seen["three"] > 0

        wait_until(three_served, deadline, f"the new server answering within {deadline}s")

        # The first leaves while calls keep coming: none fails, and it gets none once it is gone.
        failures: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    client.request(b"x")
                except BaseException as exc:  # every failure is what the test counts
                    failures.append(exc)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_until(lambda: seen["one"] > 0 and seen["two"] > 0, 5, "load reaching the servers")
            assert one.leave(timeout=5)
            after = seen["one"]
            wait_until(lambda: _state(client, one) is None, 5, "the server that left dropped")
            more = sum(seen.values())
            wait_until(lambda: sum(seen.values()) > more + 50, 10, "calls going on after the leave")
        finally:
            stop.set()
            loader.join(10)
        assert failures == []
        assert seen["one"] == after
    two.close()
    three.close()


@pytest.mark.timeout(60)
def test_maintenance_means_no_new_requests_and_no_failed_call(fabric: Fabric, servers: list[Server]) -> None:
    seen: Counter[str] = Counter()
    one, two = _server(servers, "one", seen, fabric), _server(servers, "two", seen, fabric)
    with Client(service="echo", fabric=fabric, timeout=5) as client:
        _ready(client, 2)
        # Maintenance announced alone, on the fabric (the server keeps answering): the client stops choosing it.
        [where] = one.announced
        fabric.announce("echo", where, "maintenance")
        wait_until(lambda: _state(client, one) == "draining", 5, "maintenance seen")
        before = seen["one"]
        assert {client.request(b"x") for _ in range(100)} == {b"two"}
        assert seen["one"] == before
        # Up again: it takes requests again.
        fabric.announce("echo", where, "up")
        wait_until(lambda: client.request(b"x") == b"one", 5, "the server back from maintenance chosen again")
    one.close()
    two.close()


@pytest.mark.timeout(30)
def test_a_waiting_call_is_sent_when_the_first_instance_appears(fabric: Fabric, servers: list[Server]) -> None:
    seen: Counter[str] = Counter()
    with Client(service="late", fabric=fabric, timeout=10) as client:
        answers: list[object] = []
        caller = threading.Thread(target=lambda: answers.append(client.request(b"x")))
        caller.start()
        wait_until(lambda: client._proto.pending, 5, "the call waiting for an instance")
        server = _server(servers, "first", seen, fabric, service="late")
        caller.join(10)
        assert answers == [b"first"]
        server.close()


@pytest.mark.timeout(30)
def test_no_instance_is_unavailable_naming_the_service(fabric: Fabric) -> None:
    with Client(service="nobody", fabric=fabric, timeout=0.3) as client, pytest.raises(Unavailable, match="'nobody'"):
        client.request(b"x")


def test_service_and_endpoints_together_or_neither_is_an_error(fabric: Fabric, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Client("tcp://127.0.0.1:5555", service="echo", fabric=fabric)
    with pytest.raises(ConfigurationError, match="no servers"):
        Client()
    with pytest.raises(ConfigurationError, match="not both"):
        RpcClient("tcp://127.0.0.1:5555", service="echo", fabric=fabric)
    monkeypatch.delenv("ZMQKIT_FABRIC", raising=False)
    with pytest.raises(ConfigurationError, match="no fabric"):
        Server("tcp://127.0.0.1:0", lambda b: b, announce="echo")
    with pytest.raises(ConfigurationError, match="without endpoints to bind"):
        Server(None, lambda b: b, connect="tcp://127.0.0.1:5555", announce="echo", fabric=fabric)


@pytest.mark.timeout(60)
def test_a_killed_server_expires_and_calls_keep_succeeding(
    fabric_server: FabricServer, tmp_path: Path, servers: list[Server]
) -> None:
    code = (
        "import sys\n"
        "from zmqkit.patterns import Fabric, Server\n"
        f"fabric = Fabric({fabric_server.endpoint!r}, interval={FAST})\n"
        "server = Server('tcp://127.0.0.1:0', lambda body: b'killed', announce='echo', fabric=fabric).start()\n"
        "print(server.endpoints[0], flush=True)\n"
        "sys.stdin.read()\n"
    )
    seen: Counter[str] = Counter()
    with _running([sys.executable, "-c", code], tmp_path) as proc:
        assert proc.stdout is not None
        doomed = proc.stdout.readline().strip()
        assert doomed.startswith("tcp://"), doomed
        with Fabric([fabric_server.endpoint], interval=FAST) as fabric:
            alive = _server(servers, "alive", seen, fabric)
            with Client(service="echo", fabric=fabric, timeout=5) as client:
                _ready(client, 2)
                wait_until(lambda: client.request(b"x") == b"killed", 5, "the subprocess server answering")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
                answers = Counter(client.request(b"x") for _ in range(100))
                assert answers[b"alive"] >= 99, answers  # one reply may have left the dead server in time
                wait_until(
                    lambda: client.request(b"x") and doomed not in client.servers(), 10, "the killed server dropped"
                )
                assert {client.request(b"x") for _ in range(20)} == {b"alive"}
            alive.close()


@pytest.mark.timeout(30)
def test_asyncio_client_follows_the_service(fabric: Fabric, servers: list[Server]) -> None:
    async def handler(body: bytes) -> bytes:
        return b"async"

    async def run() -> None:
        async with (
            AsyncServer("tcp://127.0.0.1:0", handler, announce="aecho", fabric=fabric),
            AsyncClient(service="aecho", fabric=fabric, timeout=5) as client,
        ):
            assert await client.request(b"x") == b"async"
            # A second instance joins while the client runs: it gets requests, with no client restart.
            seen: Counter[str] = Counter()
            await asyncio.to_thread(_server, servers, "sync", seen, fabric, "aecho")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2 * fabric.interval + 1
            while not seen["sync"] and loop.time() < deadline:
                await asyncio.gather(*(client.request(b"y") for _ in range(10)))
            assert seen["sync"] > 0, "the new server never got a request"

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_asyncio_client_waits_for_a_first_instance(fabric: Fabric, servers: list[Server]) -> None:
    async def run() -> None:
        async with AsyncClient(service="alate", fabric=fabric, timeout=10) as client:
            call = asyncio.ensure_future(client.request(b"x"))
            await asyncio.sleep(0)  # the call is submitted and waits (nothing to send it to)
            assert not call.done()
            seen: Counter[str] = Counter()
            server = await asyncio.to_thread(_server, servers, "late", seen, fabric, "alate")
            try:
                assert await asyncio.wait_for(call, 10) == b"late"
            finally:
                server.close()

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_rpc_server_announces_and_rpc_clients_find_it(fabric: Fabric) -> None:
    server = RpcServer("tcp://127.0.0.1:0", announce="math", fabric=fabric)

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    with server:
        members = Members(fabric, "math")
        wait_until(lambda: members.up() == server.endpoints, 5, "the RPC server announced at its endpoint")
        assert server.announced == server.endpoints
        members.close()
        with RpcClient(service="math", fabric=fabric) as client:
            assert client.api.add(2, 3) == 5
            assert client.endpoints == server.endpoints

        async def call() -> int:
            async with AsyncRpcClient(service="math", fabric=fabric) as aclient:
                result: int = await aclient.api.add(4, 5)
                return result

        assert asyncio.run(call()) == 9


@pytest.mark.timeout(60)
def test_cli_rep_announces_and_req_and_rpc_call_find_by_service(
    fabric_server: FabricServer, fabric: Fabric, tmp_path: Path
) -> None:
    env = {**os.environ, "ZMQKIT_FABRIC": fabric_server.endpoint}
    argv = [sys.executable, "-m", "zmqkit", "rep", "tcp://127.0.0.1:0", "--announce", "cli-echo"]
    with _running(argv, tmp_path, env) as proc:
        members = Members(fabric, "cli-echo")
        wait_until(lambda: members.up(), 10, "zmqkit rep announced on the fabric")
        runner = CliRunner()
        found = runner.invoke(main, ["req", "--service", "cli-echo", "--fabric", fabric_server.endpoint, "hello"])
        assert found.exit_code == 0, found.output
        assert found.output.strip() == "hello"
        both = runner.invoke(main, ["req", "tcp://127.0.0.1:1", "hi", "--service", "cli-echo"])
        assert both.exit_code == 2 and "not both" in both.output, both.output
        statuses: list[str] = []
        fabric.watch("cli-echo", lambda event, entry: statuses.append(entry.status))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_until(lambda: members.current()[1] == {}, 5, "down announced once zmqkit rep is gone")
        assert "maintenance" in statuses
        members.close()


@pytest.mark.timeout(60)
def test_cli_rpc_serve_announces_and_rpc_call_finds_it(
    fabric_server: FabricServer, fabric: Fabric, tmp_path: Path
) -> None:
    (tmp_path / "calc.py").write_text("class Calc:\n    def add(self, a, b):\n        return a + b\n")
    env = {**os.environ, "ZMQKIT_FABRIC": fabric_server.endpoint, "PYTHONPATH": str(tmp_path)}
    serve = [sys.executable, "-m", "zmqkit", "rpc", "serve", "calc:Calc", "--bind", "tcp://127.0.0.1:0"]
    with _running([*serve, "--announce", "calc"], tmp_path, env) as proc:
        members = Members(fabric, "calc")
        wait_until(lambda: members.up() or proc.poll() is not None, 15, "zmqkit rpc serve announced")
        members.close()
        assert proc.poll() is None, "zmqkit rpc serve exited"
        call = [sys.executable, "-m", "zmqkit", "rpc", "call", "--service", "calc", "add", "2", "3"]
        done = subprocess.run(call, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "5"
        short = [sys.executable, "-m", "zmqkit", "rpc", "--service", "calc", "add", "1", "1"]
        done = subprocess.run(short, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.timeout(60)
def test_asyncio_load_through_a_leave_and_a_join_fails_no_call(fabric: Fabric, servers: list[Server]) -> None:
    seen: Counter[str] = Counter()
    one = _server(servers, "one", seen, fabric)
    _server(servers, "two", seen, fabric)

    async def run() -> list[BaseException]:
        failures: list[BaseException] = []
        async with AsyncClient(service="echo", fabric=fabric, timeout=5) as client:
            stop = asyncio.Event()

            async def lane() -> None:
                while not stop.is_set():
                    try:
                        await client.request(b"x")
                    except Exception as exc:  # every failure is what the test counts
                        failures.append(exc)

            lanes = [asyncio.ensure_future(lane()) for _ in range(50)]
            loop = asyncio.get_running_loop()

            async def until(condition: Callable[[], bool], what: str) -> None:
                deadline = loop.time() + 10
                while not condition():
                    assert loop.time() < deadline, what
                    await asyncio.sleep(0.01)

            await until(lambda: seen["one"] > 100 and seen["two"] > 100, "load on both servers")
            assert await asyncio.to_thread(one.leave, 5)
            after = seen["one"]
            await asyncio.to_thread(_server, servers, "three", seen, fabric)
            await until(lambda: seen["three"] > 100, "load on the server that joined")
            stop.set()
            await asyncio.gather(*lanes)
            assert seen["one"] == after
        return failures

    assert asyncio.run(run()) == []


@pytest.mark.timeout(60)
def test_cli_over_a_curve_fabric_announces_finds_and_says_when_refused(tmp_path: Path) -> None:
    """``--fabric-curve-server`` with the command's own ``--curve-secret``: only the fabric's allowed keys announce
    and look; a key it does not allow is told so instead of finding nothing."""
    runner = CliRunner()
    for name in ("fabric", "svc", "client", "stranger"):
        assert runner.invoke(main, ["keys", "generate", name, "--dir", str(tmp_path)]).exit_code == 0
    key, secret = (lambda name: str(tmp_path / f"{name}.key")), (lambda name: str(tmp_path / f"{name}.key_secret"))
    security = Curve.server(secret("fabric"), allow=[key("svc"), key("client")])
    with FabricServer("tcp://127.0.0.1:0", curve=security) as server:
        argv = [sys.executable, "-m", "zmqkit", "rep", "tcp://127.0.0.1:0", "--announce", "safe-echo"]
        fabric_flags = ["--fabric", server.endpoint, "--fabric-curve-server", key("fabric")]
        with _running([*argv, *fabric_flags, "--curve-secret", secret("svc")], tmp_path) as proc:
            wait_until(lambda: server.lookup("safe-echo"), 10, "zmqkit rep announced on the CURVE fabric")
            req = ["req", "--service", "safe-echo", *fabric_flags, "--curve-server", key("svc"), "hello"]
            found = runner.invoke(main, [*req, "--curve-secret", secret("client")])
            assert found.exit_code == 0, found.output
            assert found.output.strip() == "hello"
            refused = runner.invoke(main, [*req, "--curve-secret", secret("stranger"), "--timeout", "5"])
            assert refused.exit_code != 0 and "not allowed" in refused.output, refused.output
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        assert server.stats()["auth_failures"] >= 1
