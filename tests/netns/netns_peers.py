"""Peers for the host-harness tests, run as scripts inside a host (not collected by pytest).

``push BIND``: bind a PUSH, print ``READY``, send ``hello`` once a puller is there, print ``SENT``.
``pull CONNECT``: connect a PULL and print ``GOT <body>`` for the first message.
``echo BIND``: a REP that echoes every request; prints ``READY``, serves until killed.
``ping ENDPOINT``: for each line on stdin, a fresh REQ connects and asks once: prints ``OK``, or ``TIMEOUT``
after one second.
"""

from __future__ import annotations

import sys

import zmq


def main(role: str, endpoint: str) -> None:
    ctx = zmq.Context()
    if role == "push":
        push = ctx.socket(zmq.PUSH)
        push.bind(endpoint)
        print("READY", endpoint)
        push.send(b"hello")  # blocks until a puller has connected
        print("SENT")
        push.close(linger=5000)
    elif role == "pull":
        pull = ctx.socket(zmq.PULL)
        pull.connect(endpoint)
        print("GOT", pull.recv().decode())
        pull.close(linger=0)
    elif role == "echo":
        rep = ctx.socket(zmq.REP)
        rep.bind(endpoint)
        print("READY", endpoint)
        while True:
            rep.send(rep.recv())
    elif role == "ping":
        for _ in sys.stdin:
            req = ctx.socket(zmq.REQ)
            req.connect(endpoint)
            req.send(b"ping")
            print("OK" if req.poll(1000) and req.recv() == b"ping" else "TIMEOUT")
            req.close(linger=0)
    else:
        raise SystemExit(f"unknown role {role!r}")
    ctx.term()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
