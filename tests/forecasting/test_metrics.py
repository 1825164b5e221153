"""RMSE and MAPE against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.metrics import mape, rmse, weekly_mape, weekly_rmse


def test_rmse_by_hand():
    # errors 1, -1, 3, -3 -> squares 1, 1, 9, 9 -> mean 5
    assert rmse(
        np.array([10.0, 20.0, 30.0, 40.0]), np.array([9.0, 21.0, 27.0, 43.0])
    ) == pytest.approx(np.sqrt(5))


def test_mape_by_hand():
    # |10-9|/10 = 0.1, |20-25|/20 = 0.25 -> mean 0.175 -> 17.5 %
    assert mape(np.array([10.0, 20.0]), np.array([9.0, 25.0])) == pytest.approx(17.5)


def test_weekly_scores_are_per_row():
    actual = np.array([[10.0, 10.0], [20.0, 20.0]])
    predicted = np.array([[11.0, 9.0], [20.0, 24.0]])
    np.testing.assert_allclose(weekly_rmse(actual, predicted), [1.0, np.sqrt(8.0)])
    np.testing.assert_allclose(weekly_mape(actual, predicted), [10.0, 10.0])


@pytest.mark.parametrize(
    ("actual", "predicted", "message"),
    [
        (np.array([1.0, 2.0]), np.array([1.0]), "shape"),
        (np.array([]), np.array([]), "empty"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "finite"),
        (np.array([1.0, 2.0]), np.array([np.inf, 2.0]), "finite"),
    ],
)
def test_degenerate_input_raises(actual, predicted, message):
    for metric in (rmse, mape):
        with pytest.raises(ValueError, match=message):
            metric(actual, predicted)


def test_mape_raises_on_a_zero_actual():
    with pytest.raises(ValueError, match="zero"):
        mape(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
