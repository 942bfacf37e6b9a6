"""Every bench table shows medians, marks each target met or missed, and warns when samples are too few."""

import pytest

from zmqkit.bench import Row, print_table


@pytest.mark.parametrize(
    ("value", "baseline", "target", "samples", "verdict"),
    [
        (110e-6, 100e-6, "<= 1.15x", 6, "met"),  # a latency 1.10x raw
        (130e-6, 100e-6, "<= 1.15x", 6, "MISSED"),
        (90_000, 100_000, ">= 0.8x", 3, "met"),  # a rate 0.9x raw
        (70_000, 100_000, "≥ 0.8x HashClient", 5, "MISSED"),
        (0.2, 1.0, "≤ 0.33x HashClient", 5, "met"),
        (90_000, 100_000, ">= 0.8x", 1, "too few samples (1)"),
        (90_000, 100_000, "", 9, ""),
    ],
)
def test_a_row_judges_its_target(value: float, baseline: float, target: str, samples: int, verdict: str) -> None:
    assert Row("x", value, "s", baseline, target, samples=samples).verdict == verdict


def test_the_table_marks_verdicts_and_warns_on_small_samples(capsys: pytest.CaptureFixture[str]) -> None:
    print_table("t", [Row("ok", 1.0, "msg/s", 1.0, ">= 0.8x", samples=5), Row("one", 1.0, "msg/s", 1.0, ">= 0.8x")])
    out = capsys.readouterr().out
    assert "median" in out.splitlines()[1]
    assert out.splitlines()[2].endswith("met") and "too few samples (1)" in out.splitlines()[3]
    assert "warning: a median of fewer than 3 measurements" in out
