"""Zero-configuration discovery on one network segment: announcements as UDP broadcast beacons, as Zyre does.

``fabric="udp://*:5670"`` needs no fabric server. Every member binds UDP port 5670 (shared: every process on a
host hears every beacon) and broadcasts its announcements on each interface that can broadcast;
``udp://ADDR:5670`` broadcasts to ADDR only (one subnet's broadcast address, or ``127.255.255.255`` for one
host). A beacon is one datagram, the same ``ZKA1`` + JSON as a fabric server's upstream frame; a member that
joins broadcasts ``ZKQ1`` and every member answers with its live announcements at once.

Beacons carry no CURVE: use them on a segment you trust, and a fabric server everywhere else.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence

import zmq

from zmqkit.endpoints import parse_endpoint
from zmqkit.errors import ConfigurationError

__all__ = ["QUERY", "BeaconLink", "beacon_target", "broadcast_addresses", "is_beacon"]

QUERY = b"ZKQ1"  # "tell me what you announce": sent by a member that joins
_MAX_DATAGRAM = 65_507
_SIOCGIFFLAGS, _SIOCGIFADDR, _SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B  # Linux ioctls: an interface's flags,
# IPv4 address and netmask
_IFF_UP, _IFF_BROADCAST = 0x1, 0x2


def is_beacon(endpoints: Sequence[str]) -> bool:
    """Whether ``endpoints`` name a beacon fabric (``udp://``); mixing it with fabric servers is an error."""
    udp = [ep.startswith("udp://") for ep in endpoints]
    if any(udp) and not all(udp):
        raise ConfigurationError(f"bad fabric {list(endpoints)!r}: either udp:// beacons or fabric servers, not both")
    return any(udp)


def broadcast_addresses() -> list[str]:
    """The broadcast address of every IPv4 interface that is up and can broadcast (Linux), worked out from its
    address and netmask (an address added without ``brd`` has none set); 127.255.255.255 (this host only) when
    there is none."""
    found: list[str] = []
    try:
        import fcntl
    except ImportError:  # not Unix: the limited broadcast, on the default route's interface
        return ["255.255.255.255"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("16s16x", name.encode()[:15])
            with contextlib.suppress(OSError):  # no IPv4 address, or gone meanwhile
                flags = struct.unpack_from("H", fcntl.ioctl(probe.fileno(), _SIOCGIFFLAGS, request), 16)[0]
                if flags & _IFF_UP and flags & _IFF_BROADCAST:
                    address = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24]
                    netmask = fcntl.ioctl(probe.fileno(), _SIOCGIFNETMASK, request)[20:24]
                    found.append(
                        socket.inet_ntoa(bytes(a | (~m & 0xFF) for a, m in zip(address, netmask, strict=True)))
                    )
    return found or ["127.255.255.255"]


def beacon_target(endpoint: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` as ``(HOST, PORT)``; HOST ``*`` means every interface that can broadcast."""
    ep = parse_endpoint("tcp://" + endpoint[len("udp://") :], for_bind=True)
    if ep.port is None:
        raise ConfigurationError(f"bad fabric {endpoint!r}: beacons need a real UDP port, e.g. udp://*:5670")
    return ep.host, ep.port


class _Datagrams:
    """A UDP socket that a zmq.Poller can watch and :class:`~zmqkit.patterns._background.Background` can drain."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # Every member on this host binds the same port; broadcasts reach each of them.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            self.sock.bind(("", port))
        except OSError as exc:
            self.sock.close()
            raise ConfigurationError(f"cannot listen for beacons on UDP port {port}: {exc.strerror}") from None
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        try:
            return [self.sock.recv(_MAX_DATAGRAM)]
        except BlockingIOError:
            raise zmq.Again() from None

    def close(self, linger: int = 0) -> None:
        self.sock.close()


class BeaconLink:
    """A member's link to a beacon fabric: broadcasts what it says and hears everyone's beacons."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        targets: list[tuple[str, int]] = []
        ports = set()
        for endpoint in endpoints:
            host, port = beacon_target(endpoint)
            ports.add(port)
            targets += [(address, port) for address in (broadcast_addresses() if host == "*" else [host])]
        if len(ports) != 1:
            raise ConfigurationError(f"bad fabric {list(endpoints)!r}: beacons use one UDP port, got {sorted(ports)}")
        self._targets = sorted(set(targets))
        self.socket = _Datagrams(ports.pop())
        self.owned: tuple[object, ...] = ()

    def subscribe(self, notice: bytes) -> None:
        """Nothing to do: every beacon reaches every member, which keeps what it hears."""

    def send(self, frame: bytes) -> None:
        """Broadcast one beacon to every target (a segment that cannot be reached now is skipped)."""
        for target in self._targets:
            with contextlib.suppress(OSError):
                self.socket.sock.sendto(frame, target)
