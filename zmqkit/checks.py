"""Argument checks and time conversions every zmqkit class shares, so each small thing has one meaning.

- ``timeout=None`` means **no limit**, everywhere. A client whose calls default to its own timeout takes
  ``timeout=DEFAULT`` (the sentinel below) in its per-call signature, never None.
- Seconds become milliseconds in one way: :func:`to_ms` rounds **up**, so a wait never ends before its time.
- A bad argument raises :class:`~zmqkit.ConfigurationError` at once, naming the parameter and the value.
"""

from __future__ import annotations

import enum
import math
from typing import Final, Literal

from .errors import ConfigurationError

__all__ = [
    "DEFAULT",
    "Default",
    "check_int",
    "check_number",
    "check_timeout",
    "to_ms",
]


class Default(enum.Enum):
    """The type of :data:`DEFAULT`: "use the object's own setting" (its repr says so in ``help()``)."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = Default.DEFAULT
DefaultType = Literal[Default.DEFAULT]


def check_int(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bool is refused: ``True`` is not a count)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigurationError(f"bad {name}={value!r}: expected a whole number >= {minimum}{upper}")
    return value


def check_number(name: str, value: object, minimum: float = 0.0, *, above: bool = False) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` with ``above``); bool and NaN are refused."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (value <= minimum if above else value < minimum)
    ):
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        raise ConfigurationError(f"bad {name}={value!r}: expected a finite number {bound}")
    return float(value)


def check_timeout(value: float | None, what: str = "timeout", *, allow_zero: bool = False) -> float | None:
    """A blocking call's ``timeout=``: seconds (> 0, or >= 0 with ``allow_zero``: look once) or None (no limit)."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"bad {what}={value!r}: expected seconds {bound}, or None for no limit")
    return float(value)


def to_ms(seconds: float | None) -> int:
    """Seconds as libzmq milliseconds: rounded up (a wait never ends early), never negative; None is -1 (no limit)."""
    if seconds is None:
        return -1
    return max(0, math.ceil(seconds * 1000))
