"""Diebold–Mariano with the HLN correction: a hand-computed case, identical losses, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from forecasting.significance import diebold_mariano, student_t_cdf


def test_hand_computed_case() -> None:
    first = [1.0, 2.0, 1.5, 0.5, 1.0]
    second = [1.5, 2.0, 2.5, 1.0, 1.2]
    # d = first - second = -0.5, 0, -1, -0.5, -0.2; d_bar = -2.2 / 5 = -0.44
    # deviations -0.06, 0.44, -0.56, -0.06, 0.24 -> squares sum to 0.572 -> gamma_0 = 0.1144
    # DM = -0.44 / sqrt(0.1144 / 5); HLN factor for h = 1: sqrt((5 + 1 - 2) / 5) = sqrt(0.8)
    expected = -0.44 / math.sqrt(0.1144 / 5) * math.sqrt(0.8)
    assert expected == pytest.approx(-2.60177, abs=1e-5)

    result = diebold_mariano(first, second)

    assert result.n == 5 and result.horizon == 1
    assert result.mean_loss_difference == pytest.approx(-0.44)
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(stats.t.cdf(expected, df=4), rel=1e-10)
    assert 0.02 < result.p_value < 0.04  # a win at 5 %, not at 1 %


def test_hand_computed_case_with_horizon_two() -> None:
    d = np.array([-0.5, -0.6, -0.1, 0.1, -0.3, -0.4])  # positively autocorrelated
    second = np.full(6, 2.0)
    first = second + d
    n, h = 6, 2
    d_bar = sum(d) / n
    gamma0 = sum((x - d_bar) ** 2 for x in d) / n
    gamma1 = sum((d[t] - d_bar) * (d[t - 1] - d_bar) for t in range(1, n)) / n
    variance = gamma0 + 2 * gamma1
    assert variance > 0
    expected = d_bar / math.sqrt(variance / n) * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)

    result = diebold_mariano(first, second, horizon=2)

    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(stats.t.cdf(expected, df=n - 1), rel=1e-10)


def test_a_negative_long_run_variance_falls_back_to_gamma_zero() -> None:
    d = np.array([-0.5, 0.2, -0.7, -0.1, -0.4, 0.1])  # alternating: gamma_0 + 2 gamma_1 < 0
    n, h = 6, 2
    d_bar = sum(d) / n
    gamma0 = sum((x - d_bar) ** 2 for x in d) / n
    gamma1 = sum((d[t] - d_bar) * (d[t - 1] - d_bar) for t in range(1, n)) / n
    assert gamma0 + 2 * gamma1 < 0
    expected = d_bar / math.sqrt(gamma0 / n) * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)

    result = diebold_mariano(d, np.zeros(n), horizon=2)

    assert result.statistic == pytest.approx(expected, rel=1e-12)


def test_identical_losses_give_p_one() -> None:
    losses = [3.2, 1.1, 4.0, 2.5]
    result = diebold_mariano(losses, losses)
    assert (result.statistic, result.p_value, result.mean_loss_difference) == (0.0, 1.0, 0.0)


def test_a_constant_difference_has_no_measurable_noise() -> None:
    result = diebold_mariano([1.0, 2.0, 3.0], [1.1, 2.1, 3.1])
    assert result.p_value == 1.0 and result.statistic == 0.0
    assert result.mean_loss_difference == pytest.approx(-0.1)


def test_the_test_is_one_sided() -> None:
    rng = np.random.default_rng(5)
    better = rng.gamma(2.0, 1.0, 19)
    worse = better + rng.normal(0.5, 0.5, 19)
    forward = diebold_mariano(better, worse)
    backward = diebold_mariano(worse, better)
    assert forward.statistic < 0 and forward.p_value < 0.01
    assert backward.statistic == pytest.approx(-forward.statistic)
    assert backward.p_value == pytest.approx(1.0 - forward.p_value)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 10, 17, 18, 30, 101])
def test_student_t_cdf_matches_scipy(df: int) -> None:
    for t in (-8.0, -2.6, -1.0, -0.1, 0.0, 0.3, 1.7, 4.0):
        assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14)
    assert student_t_cdf(math.inf, df) == 1.0 and student_t_cdf(-math.inf, df) == 0.0


@pytest.mark.parametrize(
    ("first", "second", "kwargs", "message"),
    [
        ([1.0, 2.0], [1.0], {}, "same weeks"),
        ([1.0], [2.0], {}, "at least 2"),
        ([1.0, np.nan], [1.0, 2.0], {}, "finite"),
        ([[1.0, 2.0]], [[1.0, 2.0]], {}, "1-D"),
        ([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], {"horizon": 0}, "horizon"),
        ([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], {"horizon": 3}, "horizon"),
    ],
)
def test_degenerate_input_raises(
    first: list[float], second: list[float], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        diebold_mariano(first, second, **kwargs)


def test_student_t_cdf_rejects_bad_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_cdf(1.0, 0)
