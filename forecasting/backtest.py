"""The honest held-out backtest: train before the last H complete weeks, score everyone on them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecasting.base import Forecaster
from forecasting.metrics import mape, rmse, weekly_mape, weekly_rmse
from forecasting.weeks import DAY_COLUMNS, DAYS_PER_WEEK
from forecasting.windows import trainable_target_weeks
from pricecast.errors import DataError

LAST_DAY = pd.Timedelta(days=DAYS_PER_WEEK - 1)


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's scores on the held-out weeks; `predictions` is (H, 7) dollars."""

    name: str
    rmse: float
    mape: float
    weekly_rmse: np.ndarray
    weekly_mape: np.ndarray
    predictions: np.ndarray
    train_seconds: float
    predict_seconds: float
    refitted: bool
    description: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BacktestResult:
    """Every candidate scored on the same `held_out_weeks` (Mondays); `actuals` is (H, 7)."""

    as_of: pd.Timestamp
    held_out_weeks: pd.DatetimeIndex
    actuals: np.ndarray
    candidates: list[CandidateResult]

    @property
    def train_until(self) -> pd.Timestamp:
        """The first held-out week: every candidate trained only on targets before it."""
        return self.held_out_weeks[0]

    def candidate(self, name: str) -> CandidateResult:
        for result in self.candidates:
            if result.name == name:
                return result
        raise KeyError(f"no candidate named {name!r}; have {[c.name for c in self.candidates]}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `pricecast backtest --json`."""
        return {
            "as_of": self.as_of.date().isoformat(),
            "held_out_weeks": [w.date().isoformat() for w in self.held_out_weeks],
            "candidates": [
                {
                    "name": c.name,
                    "rmse": c.rmse,
                    "mape": c.mape,
                    "train_seconds": c.train_seconds,
                }
                for c in self.candidates
            ],
        }


def visible_weeks(weeks: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Only weeks that had ended by `as_of`: later rows (and the week in progress) are unseen."""
    return weeks[weeks.index + LAST_DAY <= pd.Timestamp(as_of)].sort_index()


def held_out_span(
    weeks: pd.DataFrame, *, as_of: dt.date | pd.Timestamp, holdout_weeks: int, window_weeks: int
) -> pd.DatetimeIndex:
    """The last `holdout_weeks` complete weeks up to `as_of` that have a full window before them."""
    if holdout_weeks < 1:
        raise DataError(f"holdout_weeks must be >= 1, got {holdout_weeks}")
    scorable = trainable_target_weeks(visible_weeks(weeks, as_of), window_weeks=window_weeks)
    if len(scorable) < holdout_weeks + 1:
        raise DataError(
            f"as of {pd.Timestamp(as_of).date()} only {len(scorable)} complete week(s) have "
            f"{window_weeks} complete weeks before them; a backtest of {holdout_weeks} held-out "
            "weeks needs more (ingest more history, or lower --holdout-weeks)"
        )
    return scorable[-holdout_weeks:]


def backtest(
    weeks: pd.DataFrame,
    *,
    as_of: dt.date | pd.Timestamp,
    candidates: Sequence[Forecaster],
    holdout_weeks: int = 19,
    window_weeks: int = 40,
) -> BacktestResult:
    """Fit candidates on weeks before the held-out span, then score all on the same weeks.

    A candidate whose `is_fitted` is already True (e.g. a loaded champion) is NOT refitted: it is
    scored as it is, with train_seconds 0 and `refitted` False. All others get `fit(weeks before
    the span, train_until=first held-out week)` — they never see a held-out week while training.
    Each candidate predicts all held-out weeks in one batch; the input of a held-out week is the
    weeks before it (earlier held-out weeks included). Nothing after `as_of` is ever read.
    """
    if not candidates:
        raise DataError("a backtest needs at least one candidate")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise DataError(f"candidate names must be unique, got {names}")
    visible = visible_weeks(weeks, as_of)
    held_out = held_out_span(
        visible, as_of=as_of, holdout_weeks=holdout_weeks, window_weeks=window_weeks
    )
    train_until = held_out[0]
    training = visible[visible.index < train_until]
    actuals = visible.loc[held_out, list(DAY_COLUMNS)].to_numpy(dtype="float64")
    results = []
    for candidate in candidates:
        refit = not getattr(candidate, "is_fitted", False)
        started = time.perf_counter()
        if refit:
            candidate.fit(training, train_until=train_until)
        train_seconds = time.perf_counter() - started if refit else 0.0
        started = time.perf_counter()
        predictions = np.asarray(candidate.predict(visible, held_out), dtype="float64")
        predict_seconds = time.perf_counter() - started
        if predictions.shape != actuals.shape or not np.isfinite(predictions).all():
            raise DataError(
                f"{candidate.name} returned predictions of shape {predictions.shape} "
                f"(finite: {np.isfinite(predictions).all()}); expected finite {actuals.shape}"
            )
        results.append(
            CandidateResult(
                name=candidate.name,
                rmse=rmse(actuals, predictions),
                mape=mape(actuals, predictions),
                weekly_rmse=weekly_rmse(actuals, predictions),
                weekly_mape=weekly_mape(actuals, predictions),
                predictions=predictions,
                train_seconds=train_seconds,
                predict_seconds=predict_seconds,
                refitted=refit,
                description=candidate.describe(),
            )
        )
    return BacktestResult(
        as_of=pd.Timestamp(as_of), held_out_weeks=held_out, actuals=actuals, candidates=results
    )
