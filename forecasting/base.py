"""The one contract every forecaster keeps: the LSTM strategies and the baselines alike.

A forecaster predicts the seven daily closes of a target ISO week from the complete weeks
before it. It only ever sees prices known before the target week starts.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd


class NotFittedError(RuntimeError):
    """predict() was called before fit()."""


class Forecaster(abc.ABC):
    """fit(weeks, train_until) -> self; predict(weeks, targets) -> (n, 7) dollars; describe()."""

    #: Short stable name used in tables, MLflow run names and JSON ("fresh", "retrain", "naive").
    name: str

    @abc.abstractmethod
    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        """Learn from `weeks` (a weekly frame, see forecasting.weeks) using only target weeks that
        start strictly before `train_until` (the first held-out week). Returns self."""

    @abc.abstractmethod
    def predict(self, weeks: pd.DataFrame, target_weeks: Sequence[pd.Timestamp]) -> np.ndarray:
        """Closes in dollars, shape (len(target_weeks), 7), for each target week (a Monday).

        Each row uses only weeks that end before its target week starts. All targets are
        predicted in one batch. Raises NotFittedError before fit().
        """

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Parameters worth recording (MLflow params): strategy, window, epochs, seed, cutoff..."""
