"""Whether an asyncio client bound to one event loop may be used from the loop running now.

A client made once (at module level, say) outlives each ``asyncio.run`` that uses it; pytest-asyncio runs every
test in a loop of its own. Its sockets are watched by the loop it was first used in, and a loop that has ended
never wakes its calls again: on the first call from another loop the client moves there, or refuses at once.
Never does it wait on a loop that is gone.
"""

from __future__ import annotations

import asyncio

from .errors import ConfigurationError

__all__ = ["check_new_loop"]


def check_new_loop(bound: asyncio.AbstractEventLoop | None, what: str, *, movable: bool) -> None:
    """Return if ``what``, bound to ``bound`` (or to no loop yet), may serve the running loop; else raise
    ConfigurationError at once.

    A ``movable`` client leaves a loop that has stopped (a finished ``asyncio.run``), not one that still runs in
    another thread: its callbacks there could run at the same time as this loop's.
    """
    running = asyncio.get_running_loop()
    if bound is None or bound is running:
        return
    if not movable:
        raise ConfigurationError(
            f"{what} is bound to the event loop it was first used in, and this is another one: make one per"
            " event loop (with pytest-asyncio, in a fixture rather than at module level)"
        )
    if bound.is_running():
        raise ConfigurationError(
            f"{what} is in use by an event loop running in another thread: make one per event loop"
        )
