"""Whether a fabric member hears its fabric servers (sans-I/O), so that losing the fabric expires no service.

A member cannot tell "every instance of a service died" from "every fabric server is gone or cut off": both
are silence. So its table counts silence as missed heartbeats only up to the last time it heard the fabric
(:meth:`Hearing.horizon`), and when it hears the fabric again after a silence, every entry gets a fresh expiry
window for its announcer to be heard in (:meth:`connected` and :meth:`message` return True: renew the table).

The fabric is heard while a fabric server is connected (the socket monitor's handshake and disconnect events;
a link with nothing to watch, such as UDP beacons, always counts as connected) and, once a fabric server has
sent a *beat* (``[_zk.fabric, seconds]``, every ``beat`` seconds), only up to the last message that came: a cut
link (no TCP reset) stops the beats long before the connection times out. Fabric servers that send no beats
(older ones) are heard up to now while connected.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["BEAT_TOPIC", "GAP", "Hearing", "parse_beat"]

BEAT_TOPIC = b"_zk.fabric"  # a fabric server's beat: [BEAT_TOPIC, seconds between beats as ASCII decimal]
GAP = 2.0  # beats missed in a row after which the next message from the fabric ends a silence


def parse_beat(body: bytes) -> float:
    """The seconds between a fabric server's beats, from a beat's body; ValueError when it is not one."""
    seconds = float(body.decode("ascii"))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"bad beat interval {body!r:.40}: expected seconds > 0")
    return seconds


class Hearing:
    """What a member hears of its fabric; fed by the member's thread, read under the member's lock."""

    def __init__(self, clock: Callable[[], float], *, tracked: bool) -> None:
        """``tracked``: the link reports its connections (``connected``); otherwise it always counts as one."""
        self._clock = clock
        self.tracked = tracked
        self.connections = 0 if tracked else 1
        self.beat: float | None = None  # the fabric servers' beat interval, once one was heard
        self.heard = clock()  # when the last message from a fabric server came
        self._frozen: float | None = self.heard if tracked else None  # the horizon while no server is connected
        self._relearn_by: float | None = None  # after a server left: a beat must come by then, or beats stop counting

    def horizon(self) -> float:
        """The time up to which silence counts as missed heartbeats."""
        if self._frozen is not None:
            return self._frozen
        now = self._clock()
        if self.beat is None or (self._relearn_by is not None and now > self._relearn_by):
            return now  # servers without beats: connected is all we know
        return min(now, self.heard)

    def connected(self, count: int) -> bool:
        """``count`` fabric servers are connected now; True when that ends a time with none (renew the table)."""
        was, self.connections = self.connections, count
        if count == 0:
            if self._frozen is None:
                self._frozen = self.horizon()
            self.beat, self._relearn_by = None, None
            return False
        if count < was and self.beat is not None:
            # The server that left may have been the only one beating: the others have two beats to show it.
            self._relearn_by = self._clock() + GAP * self.beat
        if self._frozen is None:
            return False
        self._frozen = None
        return True

    def message(self, beat: float | None = None) -> bool:
        """A message came from the fabric (``beat``: a beat, with its interval); True when it ends a silence
        longer than :data:`GAP` beats (a cut link healed before its connection dropped): renew the table."""
        now = self._clock()
        silent = self.beat is not None and now - self.heard > GAP * self.beat
        self.heard = now
        if beat is not None:
            self.beat, self._relearn_by = beat, None
        return silent
