"""Split-conformal intervals: ranks, hand-computed quantiles, widening, containment, coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forecasting.intervals import (
    SCALED_METHOD,
    IntervalCalibration,
    calibrate_intervals,
    conformal_rank,
    coverage,
    trailing_volatility,
    weekly_scales,
)


@pytest.mark.parametrize(
    ("n", "level", "expected"),
    [
        (19, 0.80, (16, False)),  # ceil(20 * 0.8) = 16
        (19, 0.95, (19, False)),  # ceil(20 * 0.95) = 19: the max, but enough weeks
        (18, 0.95, (18, True)),  # ceil(19 * 0.95) = 19 > 18: saturated
        (3, 0.80, (3, True)),  # ceil(4 * 0.8) = 4 > 3
        (9, 0.50, (5, False)),  # ceil(10 * 0.5) = 5
    ],
)
def test_conformal_rank(n: int, level: float, expected: tuple[int, bool]) -> None:
    assert conformal_rank(n, level) == expected


def test_quantiles_by_hand() -> None:
    # Nine weeks; day d of week w misses by a log ratio of +-(w + 1) * 0.01 * (d + 1).
    # 80 %: k = ceil(10 * 0.8) = 8 -> q = 0.08 * (d + 1). 95 %: ceil(9.5) = 10 > 9 -> the max,
    # 0.09 * (d + 1), flagged saturated.
    weeks = np.array([3, 7, 0, 8, 1, 5, 2, 6, 4])  # shuffled: order must not matter
    scores = (weeks[:, None] + 1) * 0.01 * (np.arange(7)[None, :] + 1)
    signs = np.where(np.arange(9) % 2 == 0, 1.0, -1.0)[:, None]
    predicted = np.full((9, 7), 250.0)
    actual = predicted * np.exp(signs * scores)

    calibration = calibrate_intervals(actual, predicted)

    assert calibration.levels == (0.80, 0.95)
    assert calibration.n_weeks == 9
    assert calibration.saturated == (False, True)
    np.testing.assert_allclose(calibration.quantile(0.80), 0.08 * np.arange(1, 8))
    np.testing.assert_allclose(calibration.quantile(0.95), 0.09 * np.arange(1, 8))
    lower, upper = calibration.bounds(np.full(7, 100.0), 0.80)
    np.testing.assert_allclose(lower, 100.0 * np.exp(-0.08 * np.arange(1, 8)))
    np.testing.assert_allclose(upper, 100.0 * np.exp(0.08 * np.arange(1, 8)))


def _relative_misses(sigma: float, n_weeks: int = 19, seed: int = 3) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    predicted = 20_000.0 * np.exp(rng.normal(0.0, 0.3, (n_weeks, 1))) * np.ones((1, 7))
    actual = predicted * np.exp(rng.normal(0.0, sigma, (n_weeks, 7)))
    return actual, predicted


def test_intervals_widen_with_the_residual_spread() -> None:
    point = np.linspace(30_000.0, 31_000.0, 7)
    # Same random draws, scaled: every score grows by the factor, so every quantile does too.
    narrow = calibrate_intervals(*_relative_misses(0.02))
    wide = calibrate_intervals(*_relative_misses(0.05))
    for level in (0.80, 0.95):
        lo_n, hi_n = narrow.bounds(point, level)
        lo_w, hi_w = wide.bounds(point, level)
        assert np.all(hi_w - lo_w > hi_n - lo_n)
        assert wide.mean_width_percent(level) > narrow.mean_width_percent(level)
    # And the 95 % band is never narrower than the 80 % one.
    lo80, hi80 = wide.bounds(point, 0.80)
    lo95, hi95 = wide.bounds(point, 0.95)
    assert np.all(lo95 <= lo80) and np.all(hi95 >= hi80)


def test_intervals_contain_the_point_and_scale_with_price() -> None:
    calibration = calibrate_intervals(*_relative_misses(0.04))
    points = np.array([np.full(7, 100.0), np.linspace(5_000.0, 6_000.0, 7)])
    for level, (lower, upper) in calibration.intervals(points).items():
        assert lower.shape == upper.shape == (2, 7), level
        assert np.all(lower < points) and np.all(points < upper)
        # Relative widths do not depend on the price level.
        np.testing.assert_allclose(upper[0] / points[0], upper[1] / points[1])


def test_perfect_predictions_give_a_zero_width_band() -> None:
    predicted = np.full((5, 7), 10.0)
    calibration = calibrate_intervals(predicted, predicted)
    lower, upper = calibration.bounds(np.full(7, 42.0), 0.95)
    np.testing.assert_array_equal(lower, 42.0)
    np.testing.assert_array_equal(upper, 42.0)


def test_conformal_coverage_holds_on_exchangeable_weeks() -> None:
    # The split-conformal guarantee: with 19 calibration weeks, the next week's days fall in the
    # 80 % band with probability 16/20 and in the 95 % band with 19/20 (continuous scores).
    rng = np.random.default_rng(11)
    hits: dict[float, list[float]] = {0.80: [], 0.95: []}
    for _ in range(600):
        sample = 100.0 * np.exp(rng.standard_t(4, (20, 7)) * 0.03)
        predicted = np.full((20, 7), 100.0)
        calibration = calibrate_intervals(sample[:19], predicted[:19])
        for level in hits:
            lower, upper = calibration.bounds(predicted[19], level)
            hits[level].append(coverage(sample[19], lower, upper))
    assert np.mean(hits[0.80]) == pytest.approx(0.80, abs=0.03)
    assert np.mean(hits[0.95]) == pytest.approx(0.95, abs=0.02)


def test_coverage_by_hand() -> None:
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    lower = np.array([9.0, 21.0, 25.0, 40.0])  # 20 is below its band
    upper = np.array([11.0, 25.0, 35.0, 41.0])  # 40 sits on the lower edge: inside
    assert coverage(actual, lower, upper) == 0.75
    assert coverage(actual[:1], lower[:1], upper[:1]) == 1.0


def test_calibration_round_trips_through_json() -> None:
    calibration = calibrate_intervals(*_relative_misses(0.03, n_weeks=7))
    stored = json.loads(json.dumps(calibration.to_dict()))
    assert IntervalCalibration.from_dict(stored) == calibration
    assert stored["levels"]["0.95"]["saturated"] is True  # 7 weeks cannot give 95 %


@pytest.mark.parametrize(
    ("actual", "predicted", "message"),
    [
        (np.full((3, 7), np.nan), np.ones((3, 7)), "finite"),
        (np.ones((3, 7)), np.ones((4, 7)), "shape"),
        (np.ones((3, 6)), np.ones((3, 6)), "shape"),
        (np.ones(7), np.ones(7), "shape"),
        (np.empty((0, 7)), np.empty((0, 7)), "at least one held-out week"),
        (np.zeros((3, 7)), np.ones((3, 7)), "positive"),
    ],
)
def test_degenerate_calibration_input_raises(
    actual: np.ndarray, predicted: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate_intervals(actual, predicted)


def test_degenerate_bounds_and_coverage_raise() -> None:
    calibration = calibrate_intervals(*_relative_misses(0.03))
    with pytest.raises(ValueError, match="shape"):
        calibration.bounds(np.ones(6), 0.80)
    with pytest.raises(ValueError, match="positive"):
        calibration.bounds(np.array([1.0, 2, 3, 4, 5, 6, np.nan]), 0.80)
    with pytest.raises(KeyError, match="0.9"):
        calibration.bounds(np.ones(7), 0.90)
    with pytest.raises(ValueError, match="same shape"):
        coverage(np.ones(3), np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no days"):
        coverage(np.empty(0), np.empty(0), np.empty(0))
    with pytest.raises(ValueError, match="finite"):
        coverage(np.array([np.nan]), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="lower > upper"):
        coverage(np.ones(1), np.full(1, 2.0), np.zeros(1))
    with pytest.raises(ValueError, match="unreadable"):
        IntervalCalibration.from_dict({"levels": {"0.8": {"quantiles": [0.1] * 6}}})


def test_trailing_volatility_by_hand() -> None:
    # Log returns alternate +0.02 / -0.02 over 8 steps: sample std = 0.02 * sqrt(8 / 7).
    closes = 100.0 * np.exp(np.cumsum([0.0] + [0.02, -0.02] * 4))
    assert trailing_volatility(closes, days=8) == pytest.approx(0.02 * np.sqrt(8 / 7))
    # Only the last days + 1 closes count: a wild start is forgotten.
    assert trailing_volatility([1.0, 900.0, *closes], days=8) == pytest.approx(
        0.02 * np.sqrt(8 / 7)
    )
    assert trailing_volatility(np.full(30, 50.0)) > 0  # flat: the floor, never a zero-width band
    with pytest.raises(ValueError, match="at least 8"):
        trailing_volatility([1.0, 2.0, 3.0])


def test_weekly_scales_use_only_the_closes_before_each_monday() -> None:
    dates = np.arange("2021-01-01", "2021-03-01", dtype="datetime64[D]").astype("datetime64[ns]")
    calm = 100.0 * np.exp(np.cumsum(np.tile([0.01, -0.01], 20)))  # to 2021-02-09
    wild = calm[-1] * np.exp(np.cumsum(np.tile([0.1, -0.1], 10)))  # from 2021-02-10
    closes = np.concatenate([calm, wild])[: len(dates)]
    mondays = np.array(["2021-02-08", "2021-03-01"], dtype="datetime64[ns]")

    before_calm, after_wild = weekly_scales(closes, dates, mondays)

    assert before_calm == pytest.approx(trailing_volatility(closes[:38]))
    assert after_wild > 5 * before_calm


def test_scaled_bands_grow_with_the_volatility_before_the_week() -> None:
    rng = np.random.default_rng(3)
    predicted = np.full((19, 7), 1000.0)
    scales = rng.uniform(0.01, 0.05, 19)
    # Misses proportional to each week's volatility: scaled scores are all alike.
    actual = predicted * np.exp(scales[:, None] * rng.choice([-1.5, 1.5], (19, 7)))

    calibration = calibrate_intervals(actual, predicted, scales=scales)

    assert calibration.method == SCALED_METHOD and calibration.scale_days == 28
    np.testing.assert_allclose(calibration.quantile(0.80), 1.5)
    calm_low, calm_high = calibration.bounds(np.full(7, 1000.0), 0.80, 0.01)
    wild_low, wild_high = calibration.bounds(np.full(7, 1000.0), 0.80, 0.04)
    np.testing.assert_allclose(calm_high, 1000.0 * np.exp(0.015))
    assert (wild_high - wild_low > 3.9 * (calm_high - calm_low)).all()
    assert (wild_low < 1000.0).all() and (wild_high > 1000.0).all()
    # In-sample, each week's band (scaled by its own volatility) holds its miss exactly.
    low, high = calibration.bounds(predicted, 0.95, np.asarray(calibration.scales))
    assert coverage(actual, low * (1 - 1e-12), high * (1 + 1e-12)) == 1.0
    restored = IntervalCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored == calibration
    assert restored.scale_for(1000.0 * np.exp(np.cumsum(np.tile([0.02, -0.02], 15)))) > 0.02


def test_an_unscaled_calibration_still_loads_and_ignores_history() -> None:
    predicted = np.full((5, 7), 10.0)
    old = calibrate_intervals(predicted * 1.1, predicted).to_dict()
    del old["scale_days"], old["scales"]  # as logged before scaled scores existed

    calibration = IntervalCalibration.from_dict(old)

    assert calibration.scale_days is None and calibration.scale_for([1.0, 500.0]) == 1.0
    np.testing.assert_allclose(calibration.bounds(np.full(7, 10.0), 0.80)[1], 11.0)
