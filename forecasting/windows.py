"""Sliding windows over complete ISO weeks: W consecutive weeks in, the next week's 7 closes out.

Inputs and targets are expressed relative to prices known when the forecast is made, so a
prediction turns back into dollars with the last close before its target week and nothing later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from forecasting.weeks import COMPLETE, DAY_COLUMNS, DAYS_PER_WEEK, point_relative
from pricecast.errors import DataError

ONE_WEEK = pd.Timedelta(weeks=1)

#: Input normalisations. Targets are always relative to the last close before the target week.
#: - "last_close": every input close relative to the last close before the target week.
#: - "week_first": the book's point-relative form, each week relative to its own first close.
NORMALISATIONS: tuple[str, ...] = ("last_close", "week_first")


@dataclass(frozen=True)
class Windows:
    """A batch of windows: `inputs` (n, W, 7), `targets` (n, 7) or None, both relative.

    `closes` (n, W, 7) holds the same inputs in dollars; `base_closes` (n,) is the last close
    before each target week, the only price that denormalises a prediction.
    """

    target_weeks: pd.DatetimeIndex
    closes: np.ndarray
    inputs: np.ndarray
    base_closes: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.target_weeks)


def _complete_closes(weeks: pd.DataFrame) -> pd.DataFrame:
    complete = weeks[weeks[COMPLETE]]
    return complete.loc[:, list(DAY_COLUMNS)].astype("float64").sort_index()


def trainable_target_weeks(
    weeks: pd.DataFrame,
    *,
    window_weeks: int,
    after: pd.Timestamp | None = None,
    before: pd.Timestamp | None = None,
) -> pd.DatetimeIndex:
    """Complete weeks preceded by `window_weeks` consecutive complete weeks: training targets.

    Only targets with `after < week_start < before` (either bound optional) are returned, in order.
    """
    if window_weeks < 1:
        raise ValueError(f"window_weeks must be >= 1, got {window_weeks}")
    index = _complete_closes(weeks).index
    # On nanosecond integers: each week's run of consecutive complete weeks, counted from the one
    # before it (a night asks this ~8 times; comparing Timestamps took 27 ms a call for 4 years
    # of weeks, this 0.8 ms).
    stamps = index.as_unit("ns").asi8
    values = np.unique(stamps)
    step = ONE_WEEK.value  # nanoseconds
    previous = np.searchsorted(values, values - step)
    has_previous = previous < len(values)
    has_previous[has_previous] = values[previous[has_previous]] == values[has_previous] - step
    run = [0] * len(values)
    targets = np.zeros(len(values), dtype=bool)
    for i in range(len(values)):  # previous[i] < i: its run is known
        if has_previous[i]:
            run[i] = run[previous[i]] + 1
            targets[i] = run[previous[i]] >= window_weeks
        else:
            run[i] = 1
    out = pd.DatetimeIndex(index[np.isin(stamps, values[targets])], name=index.name)
    if after is not None:
        out = out[out > pd.Timestamp(after)]
    if before is not None:
        out = out[out < pd.Timestamp(before)]
    return out


def make_windows(
    weeks: pd.DataFrame,
    target_weeks: Sequence[pd.Timestamp] | pd.DatetimeIndex,
    *,
    window_weeks: int,
    normalisation: str = "last_close",
    with_targets: bool = False,
) -> Windows:
    """Windows for the given target weeks (Mondays), inputs from the `window_weeks` weeks before.

    A target week need not be in `weeks` unless `with_targets` (it may be next week). Raises
    DataError if a window would span a missing or incomplete week, or a target is incomplete.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; choose from {NORMALISATIONS}")
    closes = _complete_closes(weeks)
    targets = pd.DatetimeIndex([pd.Timestamp(t) for t in target_weeks], name=closes.index.name)
    n = len(targets)
    raw = np.empty((n, window_weeks, DAYS_PER_WEEK), dtype="float64")
    target_closes = np.empty((n, DAYS_PER_WEEK), dtype="float64")
    positions = pd.Series(np.arange(len(closes)), index=closes.index)
    values = closes.to_numpy()
    for i, target in enumerate(targets):
        starts = pd.DatetimeIndex([target - ONE_WEEK * k for k in range(window_weeks, 0, -1)])
        found = positions.reindex(starts)
        if found.isna().any():
            gap = starts[found.isna().to_numpy()][0].date()
            raise DataError(
                f"cannot build the {window_weeks}-week window for the week of {target.date()}: "
                f"the week of {gap} is missing or incomplete; ingest the missing days or wait "
                f"until {window_weeks} complete weeks precede it"
            )
        raw[i] = values[found.to_numpy(dtype="int64")]
        if with_targets:
            if target not in positions.index:
                raise DataError(f"the target week of {target.date()} is missing or incomplete")
            target_closes[i] = values[positions[target]]
    base = raw[:, -1, -1] if n else np.empty(0)
    if normalisation == "last_close":
        inputs = point_relative(raw, base[:, None, None])
    else:
        inputs = point_relative(raw, raw[:, :, :1])
    return Windows(
        target_weeks=targets,
        closes=raw,
        inputs=inputs,
        base_closes=base.copy(),
        targets=point_relative(target_closes, base[:, None]) if with_targets else None,
    )
