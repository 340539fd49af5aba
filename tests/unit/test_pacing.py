"""Acks first: the AIMD limit over loop-lag samples (pure)."""

from __future__ import annotations

import pytest

from enrich.core.pacing import AdaptiveLimit


def test_late_loop_halves_down_to_the_minimum_and_on_time_grows_by_one() -> None:
    pace = AdaptiveLimit(1, 16, target_lag_s=0.005)
    assert pace.limit == 16
    assert [pace.update(0.050) for _ in range(6)] == [8, 4, 2, 1, 1, 1]  # minimum 1 here
    assert [pace.update(0.0) for _ in range(4)] == [2, 3, 4, 5]
    for _ in range(40):
        pace.update(0.0)
    assert pace.limit == 16  # never above the configured concurrency


def test_between_half_and_full_target_holds_steady() -> None:
    pace = AdaptiveLimit(2, 10, target_lag_s=0.010, limit=6)
    assert [pace.update(0.007) for _ in range(3)] == [6, 6, 6]
    assert pace.update(0.011) == 3
    assert pace.update(0.011) == 2  # the minimum holds


def test_disabled_stays_at_the_maximum() -> None:
    pace = AdaptiveLimit(1, 16, target_lag_s=0)
    assert not pace.enabled
    assert pace.update(10.0) == 16


def test_a_zero_minimum_pauses_and_the_first_on_time_sample_resumes() -> None:
    pace = AdaptiveLimit(0, 4, target_lag_s=0.005)
    assert [pace.update(0.050) for _ in range(4)] == [2, 1, 0, 0]
    assert pace.update(0.001) == 1


@pytest.mark.parametrize(("minimum", "maximum", "decrease"), [(-1, 4, 0.5), (0, 0, 0.5),
                                                              (5, 4, 0.5),
                                                              (1, 4, 1.0), (1, 4, 0.0)])
def test_bad_parameters_are_refused(minimum: int, maximum: int, decrease: float) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(minimum, maximum, 0.005, decrease=decrease)
