"""Multipart send and receive for the cache's hot paths, lighter than pyzmq's ``send_multipart``/``recv_multipart``.

Those spend more time in Python per frame (flag enums combined per part, checks on every part) than libzmq
spends moving a small message; a cache round trip is two or three frames each way, so that overhead is most
of the client's and the node's own CPU time per request. These take the same arguments for plain sockets.
"""

from __future__ import annotations

import zmq

__all__ = ["send_frames", "recv_frames", "NOBLOCK"]

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """Send ``frames`` as one message (zmq.Again from the first part if ``NOBLOCK`` and it cannot go now;
    libzmq takes the remaining parts of a message once its first is in)."""
    send = sock.send
    more = flags | _SNDMORE
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], more)
    send(frames[last], flags)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Every frame of the next message, as bytes."""
    recv = sock.recv
    frames = [recv(flags)]
    more = sock.getsockopt
    while more(_RCVMORE):
        frames.append(recv(flags))
    return frames
