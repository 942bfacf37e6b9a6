"""A presence fabric: services announce themselves; a client finds a queue's address in the directory.

Everything meets at one Forwarder with a last-value cache, so a directory that starts late knows every
service at once instead of waiting for the next heartbeat.

    python examples/presence.py
"""

from __future__ import annotations

import threading

from zmqkit.patterns import Directory, Forwarder, Presence
from zmqkit.patterns.presence.protocol import Entry


def main() -> None:
    with Forwarder(last_value_cache=1000) as fabric:
        print(f"fabric: services announce to {fabric.xsub_endpoint}, directories listen on {fabric.xpub_endpoint}")

        # Two machines run the "orders" work queue; one also runs search.
        host_a = Presence(fabric.xsub_endpoint, interval=0.5)
        host_b = Presence(fabric.xsub_endpoint, interval=0.5)
        host_a.announce("orders-queue", "tcp://10.0.0.5:6000", meta={"pattern": "pipeline"})
        host_b.announce("orders-queue", "tcp://10.0.0.6:6000", meta={"pattern": "pipeline"})
        host_b.announce("search", "tcp://10.0.0.6:7000")

        with Directory(fabric.xpub_endpoint) as directory:
            # A client that needs the queue asks the directory where it lives.
            entry = directory.wait("orders-queue", timeout=10)
            print(f"client: orders-queue is at {entry.endpoint} ({entry.status})")

            removed = threading.Event()

            def on_change(event: str, changed: Entry) -> None:
                print(f"watch: {event} {changed.service} {changed.endpoint} {changed.status}")
                if event == "removed" and changed.service == "search":  # host B's last goodbye
                    removed.set()

            directory.watch(on_change)

            # Host A goes into maintenance: still listed, but lookups show it, and "up" instances come first.
            host_a.announce("orders-queue", "tcp://10.0.0.5:6000", status="maintenance")
            directory.wait("orders-queue", timeout=10, status="maintenance")
            print("client: orders-queue instances:", [(e.endpoint, e.status) for e in directory.lookup("orders-queue")])

            # Host B shuts down cleanly: its services are removed at once, no waiting for missed heartbeats.
            host_b.close()
            removed.wait(10)
            print("client: after host B left:", [(e.service, e.status) for e in directory.lookup()])
        host_a.close()


if __name__ == "__main__":
    main()
