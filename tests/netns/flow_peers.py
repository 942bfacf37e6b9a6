"""Peers for the pipeline and fanout discovery tests across hosts, run as scripts inside a host (not collected).

``fabric BIND``: a fabric server; prints ``READY``.
``producer FABRIC BIND``: a Producer announcing "emails"; prints ``WORKERS n`` when its worker count changes;
for each stdin line ``N TAG`` sends N messages ``TAG-i``, waits until they are all acknowledged or dead, and
prints ``DONE acked=.. dead=.. redelivered=..`` (cumulative).
``worker FABRIC``: a Worker of service "emails"; prints ``GOT value`` for each message it runs.
``publisher FABRIC BIND TAG``: a Publisher announcing "news", publishing TAG on "tick" every 50 ms.
``subscriber FABRIC``: a Subscriber of service "news"; prints ``GOT body`` for each message.
"""

from __future__ import annotations

import sys
import threading
import time

from zmqkit.patterns import Producer, Publisher, Subscriber, Worker
from zmqkit.patterns.presence.fabric import Fabric, FabricServer

INTERVAL = 0.3  # fabric heartbeats: a cut host's entries expire after 3 of them


def fabric(bind: str) -> None:
    with FabricServer(bind) as server:
        print("READY", server.endpoint, flush=True)
        server.join()


def producer(fabric_endpoint: str, bind: str) -> None:
    with (
        Fabric([fabric_endpoint], interval=INTERVAL) as member,
        Producer(bind=bind, announce="emails", fabric=member, worker_timeout=1.5) as p,
    ):
        print("READY", p.endpoint, flush=True)

        def report() -> None:
            shown = -1
            while True:
                workers = p.stats()["workers"]
                if workers != shown:
                    print("WORKERS", workers, flush=True)
                    shown = workers
                time.sleep(0.05)

        threading.Thread(target=report, daemon=True).start()
        for line in sys.stdin:
            count, tag = line.split()
            p.send_many([f"{tag}-{i}" for i in range(int(count))])
            p.join(timeout=60)
            s = p.stats()
            print(f"DONE acked={s['acked']} dead={s['dead']} redelivered={s['redelivered']}", flush=True)


def worker(fabric_endpoint: str) -> None:
    def handle(value: str) -> None:
        time.sleep(0.01)  # a task that takes a while, so a cut lands mid-run
        print("GOT", value, flush=True)

    with Fabric([fabric_endpoint], interval=INTERVAL) as member:
        w = Worker(handle, service="emails", fabric=member, heartbeat=0.3, credit=20)
        print("READY", flush=True)
        w.run()


def publisher(fabric_endpoint: str, bind: str, tag: str) -> None:
    with (
        Fabric([fabric_endpoint], interval=INTERVAL) as member,
        Publisher(bind, announce="news", fabric=member) as pub,
    ):
        print("READY", pub.endpoint, flush=True)
        while True:
            pub.publish("tick", tag)
            time.sleep(0.05)  # a steady trickle, until killed


def subscriber(fabric_endpoint: str) -> None:
    with (
        Fabric([fabric_endpoint], interval=INTERVAL) as member,
        Subscriber(service="news", topics=["tick"], fabric=member) as sub,
    ):
        print("READY", flush=True)
        for msg in sub:
            print("GOT", msg.body, flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    roles = {"fabric": fabric, "producer": producer, "worker": worker, "publisher": publisher, "subscriber": subscriber}
    roles[role](*args)
