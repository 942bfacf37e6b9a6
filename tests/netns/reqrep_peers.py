"""Peers for the request-reply discovery tests across hosts, run as scripts inside a host (not collected).

``fabric BIND``: a fabric server; prints ``READY``, runs until killed.
``server FABRICS INTERVAL NAME``: an echo ``Server`` on ``tcp://*:5600`` announcing service ``echo`` on the
fabric servers (comma-separated), answering every request with NAME; prints ``READY <endpoint>``.
``client FABRICS INTERVAL``: a ``Client(service="echo")``; for each line ``N`` on stdin it makes N calls and
prints ``CALLS <names answering, comma-separated> FAILED <count>``.
"""

from __future__ import annotations

import sys
import threading

from zmqkit import ZmqkitError
from zmqkit.patterns import Client, Fabric, FabricServer, Server

PORT = 5600


def main(role: str, args: list[str]) -> None:
    if role == "fabric":
        with FabricServer(args[0]):
            print("READY", flush=True)
            threading.Event().wait()
    fabric = Fabric(args[0].split(","), interval=float(args[1]))
    if role == "server":
        name = args[2].encode()
        server = Server(f"tcp://*:{PORT}", lambda body: name, announce="echo", fabric=fabric).start()
        print("READY", server.announced[0], flush=True)
        threading.Event().wait()
    with Client(service="echo", fabric=fabric, timeout=10) as client:
        for line in sys.stdin:
            names: set[str] = set()
            failed = 0
            for _ in range(int(line)):
                try:
                    names.add(client.request(b"?").decode())
                except ZmqkitError:
                    failed += 1
            print("CALLS", ",".join(sorted(names)) or "-", "FAILED", failed, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
