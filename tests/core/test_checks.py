"""The shared argument checks: one meaning for a timeout, a count, a number and seconds-to-ms."""

import math

import pytest

from zmqkit import ConfigurationError
from zmqkit.checks import DEFAULT, check_int, check_number, check_timeout, to_ms


@pytest.mark.parametrize("bad", [-1, 0, "5", True, float("inf"), float("nan")])
def test_check_timeout_rejects_with_value(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"bad timeout={bad!r}"):
        check_timeout(bad)  # type: ignore[arg-type]


def test_check_timeout_accepts_seconds_none_and_zero_when_asked() -> None:
    assert check_timeout(None) is None
    assert check_timeout(2) == 2.0
    assert check_timeout(0, allow_zero=True) == 0.0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None, 11])
def test_check_int_names_the_parameter_and_value(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=f"bad credit={bad!r}"):
        check_int("credit", bad, 0, 10)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, "1", False])
def test_check_number_refuses_what_is_not_a_finite_number_in_range(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="bad heartbeat="):
        check_number("heartbeat", bad, 0.0)
    assert check_number("heartbeat", 2) == 2.0
    with pytest.raises(ConfigurationError, match="> 0"):
        check_number("heartbeat", 0, above=True)


def test_to_ms_rounds_up_so_a_wait_never_ends_early() -> None:
    assert to_ms(None) == -1
    assert to_ms(0.0001) == 1
    assert to_ms(1.0) == 1000
    assert to_ms(-3) == 0
    assert repr(DEFAULT) == "DEFAULT"
