"""Baselines every LSTM must beat: naive (last close repeated) and drift (recent trend extended)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from forecasting.base import Forecaster, NotFittedError
from forecasting.weeks import DAY_COLUMNS, DAYS_PER_WEEK
from forecasting.windows import make_windows
from pricecast.errors import DataError


def last_close_before(weeks: pd.DataFrame, target_week: pd.Timestamp) -> float:
    """The last known close strictly before `target_week` (a Monday), from any earlier week."""
    earlier = weeks.loc[weeks.index < pd.Timestamp(target_week), list(DAY_COLUMNS)]
    known = earlier.to_numpy(dtype="float64").ravel()
    known = known[~np.isnan(known)]
    if known.size == 0:
        raise DataError(f"no close is known before the week of {pd.Timestamp(target_week).date()}")
    return float(known[-1])


class _RuleBaseline(Forecaster):
    """A baseline with nothing to learn: fit() only marks it ready, as the contract requires."""

    def __init__(self) -> None:
        self._fitted = False

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        self._fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"{self.name}: call fit() before predict()")


class Naive(_RuleBaseline):
    """Every day of the target week = the last close known before it."""

    name = "naive"

    def predict(self, weeks: pd.DataFrame, target_weeks: Sequence[pd.Timestamp]) -> np.ndarray:
        self._check_fitted()
        last = np.array([last_close_before(weeks, t) for t in target_weeks], dtype="float64")
        return np.repeat(last.reshape(-1, 1), DAYS_PER_WEEK, axis=1)

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name}


class Drift(_RuleBaseline):
    """The average daily log-move of the last `lookback_weeks` complete weeks, extended 7 days.

    With c the last close and c0 the first close of those weeks, n = 7 * lookback_weeks - 1 days
    earlier, day k (1..7) of the target week is c * (c / c0) ** (k / n).
    """

    name = "drift"

    def __init__(self, *, lookback_weeks: int = 40) -> None:
        if lookback_weeks < 1:
            raise ValueError(f"lookback_weeks must be >= 1, got {lookback_weeks}")
        super().__init__()
        self.lookback_weeks = lookback_weeks

    def predict(self, weeks: pd.DataFrame, target_weeks: Sequence[pd.Timestamp]) -> np.ndarray:
        self._check_fitted()
        windows = make_windows(weeks, target_weeks, window_weeks=self.lookback_weeks)
        flat = windows.closes.reshape(len(windows), -1)
        days = flat.shape[1] - 1
        daily_log_move = np.log(flat[:, -1] / flat[:, 0]) / days
        steps = np.arange(1, DAYS_PER_WEEK + 1, dtype="float64")
        return flat[:, -1:] * np.exp(daily_log_move[:, None] * steps[None, :])

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "lookback_weeks": self.lookback_weeks}
