"""Peers for the beacon fabric's cross-host test, run inside a host: ``announce SERVICE`` or ``watch SERVICE``.

Both join ``udp://*:5670`` (no fabric server) with heartbeats every 0.3 s; the announcer announces a socket
bound to every interface (so the address announced is the host's own), the watcher prints every change.
"""

from __future__ import annotations

import sys
import threading

from zmqkit.patterns import Fabric
from zmqkit.patterns.presence.fabric import Announcer

BEACONS, INTERVAL = "udp://*:5670", 0.3


def main(role: str, service: str) -> None:
    with Fabric(BEACONS, interval=INTERVAL) as fabric:
        if role == "announce":
            announcer = Announcer(fabric, service, ["tcp://0.0.0.0:6000"])
            print("ANNOUNCED", *announcer.endpoints, flush=True)
        else:
            fabric.watch(service, lambda event, entry: print("EVENT", event, entry.endpoint, entry.status, flush=True))
            print("WATCHING", flush=True)
        threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
