"""A machine room: services found by name on a fabric, a cache node joining and a server going into maintenance
while clients run, and nothing wired by address.

Here everything runs in one process, on loopback, so the example is self-contained. In production each part is
its own process on its own host, and all of them are given the same fabric (``fabric=`` or
``ZMQKIT_FABRIC=tcp://fab1:5557,tcp://fab2:5557``):

    zmqkit fabric --bind tcp://*:5557                        # on fab1 and on fab2
    zmqkit cache serve --bind tcp://*:11311 --announce cache --memory 1G   # on every server with spare memory
    zmqkit rep --announce thumbs ...  /  Server(..., announce="thumbs")
    zmqkit services                                          # what the fabric knows

    python examples/machine_room.py
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from zmqkit.cache import CacheClient, CacheNode
from zmqkit.patterns import Client, Fabric, FabricServer, Server

KEYS = [f"user:{i}" for i in range(1000)]


def thumbnailer(name: str, served: Counter[str]) -> Callable[[str], str]:
    def make_thumbnail(photo: str) -> str:
        served[name] += 1
        return f"{photo}.thumb (by {name})"

    return make_thumbnail


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.01)


def on_ring(cache: CacheClient) -> int:
    """How many nodes own keys now (a client applies what the fabric said at its next call, here node_for)."""
    cache.node_for("any")
    return len(cache.ring)


def main() -> None:
    # Two fabric servers: either may die and nobody notices. One Fabric for everything in this process, with
    # heartbeats every 0.3 s so the example runs fast.
    with (
        FabricServer("tcp://127.0.0.1:0") as fab1,
        FabricServer("tcp://127.0.0.1:0") as fab2,
        Fabric([fab1.endpoint, fab2.endpoint], interval=0.3) as fabric,
    ):
        run_room(fabric, fab1)
    print("machine room done")


def run_room(fabric: Fabric, fab1: FabricServer) -> None:
    served: Counter[str] = Counter()
    servers = {
        name: Server("tcp://127.0.0.1:0", thumbnailer(name, served), announce="thumbs", fabric=fabric).start()
        for name in ("thumbs-a", "thumbs-b")
    }
    nodes = [CacheNode(announce="cache", fabric=fabric) for _ in range(3)]
    for node in nodes:
        node.start()

    with (
        Client(service="thumbs", fabric=fabric) as client,
        CacheClient(service="cache", fabric=fabric) as cache,
    ):
        wait_for(lambda: on_ring(cache) == 3, "three cache nodes on the ring")
        cache.set_many({key: f"profile of {key}" for key in KEYS})
        print(f"services on the fabric: {sorted({e.service for e in fab1.lookup()})}")

        # A front end keeps offloading work the whole time.
        calls, failed = Counter[str](), []
        stop = threading.Event()

        def front_end() -> None:
            while not stop.is_set():
                try:
                    client.request(f"photo-{calls['sent']}.jpg")
                    calls["sent"] += 1
                except Exception as exc:  # counted, so the example shows that none fail
                    failed.append(exc)

        worker = threading.Thread(target=front_end)
        worker.start()
        try:
            wait_for(lambda: served["thumbs-a"] > 0 and served["thumbs-b"] > 0, "both servers busy")

            # A new cache node joins: the clients' ring follows, about a quarter of the keys move to it.
            before = {key: cache.node_for(key) for key in KEYS}
            nodes.append(CacheNode(announce="cache", fabric=fabric))
            nodes[-1].start()
            wait_for(lambda: on_ring(cache) == 4, "the new node on the ring")
            moved = sum(cache.node_for(key) != before[key] for key in KEYS)
            found = sum(value is not None for value in cache.get_many(KEYS).values())
            print(f"a cache node joined: {moved / len(KEYS):.0%} of the keys moved to it; {found} still cached")

            # A server goes into maintenance: it finishes what it holds, gets nothing new, no call fails.
            servers["thumbs-a"].leave(timeout=5)
            after_leave = served["thumbs-a"]
            more = calls["sent"]
            wait_for(lambda: calls["sent"] > more + 100, "calls going on after the leave")
            print(f"thumbs-a left: {served['thumbs-a'] - after_leave} calls reached it afterwards")
        finally:
            stop.set()
            worker.join(10)
        print(f"calls: {calls['sent']}, failed: {len(failed)}; served {dict(sorted(served.items()))}")

    for node in nodes:
        node.stop()
    for server in servers.values():
        server.close()


if __name__ == "__main__":
    main()
