"""Wiring a pattern object to the discovery fabric: the argument checks, and the endpoints to attach or let go.

A finding object (a Worker, a Subscriber) keeps a :class:`Following`; its driver compares
``following.members.version`` with ``following.version`` between calls (one integer compare) and, when they
differ, asks :meth:`Following.changes` what to connect and what to drop. An announcing object (a Producer, a
Publisher) keeps the :class:`~zmqkit.patterns.presence.fabric.Announcer` that :func:`announcer` makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zmqkit.errors import ConfigurationError

if TYPE_CHECKING:  # imported when used: presence imports fanout, which uses this module
    from .presence.fabric import Announcer, FabricLike, Members

__all__ = ["Following", "announcer", "following"]


class Following:
    """The instances of one service a driver is attached to, kept in step with :class:`Members`.

    Instances in maintenance stay attached: a producer or publisher in maintenance is finishing what it holds,
    and it is the one that stops taking new work. Only gone ones (down, or expired) are let go.
    """

    def __init__(self, members: Members) -> None:
        self.members = members
        self.version = -1  # below any version Members has: the first look applies what is known
        self.attached: set[str] = set()

    def changes(self) -> tuple[list[str], list[str]]:
        """``(to attach, to let go)`` since the last call, each sorted; records the version applied."""
        self.version, status = self.members.current()
        live = set(status)
        added, gone = sorted(live - self.attached), sorted(self.attached - live)
        self.attached = live
        return added, gone

    def close(self) -> None:
        """Stop following (releases the fabric); idempotent."""
        self.members.close()


def following(
    owner: str, service: str | None, fabric: FabricLike, endpoints: str | Sequence[str] | None
) -> Following | None:
    """What ``owner`` follows when made with ``service=``, else None; ConfigurationError for a service name
    with an endpoint list, or a fabric without a service."""
    if service is None:
        if fabric is not None:
            raise ConfigurationError(f"{owner}: fabric={fabric!r} needs service=NAME (the service to find there)")
        return None
    if endpoints:
        raise ConfigurationError(
            f"{owner}: service={service!r} and endpoints {endpoints!r} together: give one or the other"
        )
    from .presence.fabric import Members

    return Following(Members(fabric, service))


def announcer(
    owner: str,
    announce: str | None,
    fabric: FabricLike,
    bound: Sequence[str],
    advertise: str | Sequence[str] | None,
    meta: dict[str, Any],
) -> Announcer | None:
    """The Announcer of an object made with ``announce=`` (its ``bound`` endpoints, up at once), else None."""
    if announce is None:
        if fabric is not None or advertise is not None:
            what = f"fabric={fabric!r}" if fabric is not None else f"advertise={advertise!r}"
            raise ConfigurationError(f"{owner}: {what} needs announce=NAME (the service to announce)")
        return None
    if not bound:
        raise ConfigurationError(f"{owner}: announce={announce!r} needs bind=ENDPOINT (the address to announce)")
    from .presence.fabric import Announcer

    return Announcer(fabric, announce, bound, meta=meta, advertise=advertise)
