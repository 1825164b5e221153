"""The champion as a self-contained MLflow pyfunc: recent daily closes in, next ISO week's closes
with 80 % and 95 % bands out, in dollars. MLflow runs this file as the model's code.

It imports only mlflow, numpy, pandas and `forecasting` (bundled with the model), never `flows`,
`storage` or the settings, so a consumer needs no pricecast checkout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: The model's copy of `forecasting/` and `pricecast/errors.py`, one zip in its `code/` folder
#: (`flows.serving.log`). Python imports from a zip on `sys.path`; MLflow puts only the folder
#: there, so the bundle goes first before `forecasting` is imported. In the repository (this
#: module imported for its names) there is no bundle beside it, and nothing changes.
CODE_BUNDLE = "pricecast-code.zip"


def _bundle_on_path() -> None:
    bundle = Path(__file__).resolve().parent / "code" / CODE_BUNDLE
    if bundle.is_file() and str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))


_bundle_on_path()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import set_model  # noqa: E402
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # noqa: E402
from mlflow.pyfunc.model import PythonModel, PythonModelContext  # noqa: E402

from forecasting.candidates import ModelMetadata, SavedLSTM, from_keras  # noqa: E402
from forecasting.intervals import IntervalCalibration  # noqa: E402
from forecasting.model import load_model  # noqa: E402
from forecasting.weeks import CLOSE, DATE, DAYS_PER_WEEK, group_iso_weeks  # noqa: E402

#: Keys of the model's artifacts (files logged next to this code).
NETWORK_ARTIFACT = "network"
METADATA_ARTIFACT = "metadata"
INTERVALS_ARTIFACT = "intervals"

INPUT_COLUMNS: tuple[str, ...] = (DATE, CLOSE)
#: Output: one row per day of the forecast week, prices in dollars.
OUTPUT_COLUMNS: tuple[str, ...] = (
    DATE,
    CLOSE,
    "lower_80",
    "upper_80",
    "lower_95",
    "upper_95",
)
BAND_LEVELS: dict[float, tuple[str, str]] = {
    0.80: ("lower_80", "upper_80"),
    0.95: ("lower_95", "upper_95"),
}

SUNDAY = 6
ONE_DAY = pd.Timedelta(days=1)


class InvalidRecentCloses(MlflowException):
    """The request's closes cannot feed the model; the message says what to send instead.

    An MLflow error with INVALID_PARAMETER_VALUE, so `mlflow models serve` answers 400 with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _day(ts: pd.Timestamp) -> str:
    return f"{ts.date().isoformat()} ({ts.day_name()})"


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_recent_closes(frame: pd.DataFrame, *, window_weeks: int) -> pd.DataFrame:
    """The request as a clean daily frame (`date` datetime64 at midnight, `close` float64).

    Demands: columns `date` and `close`; parseable dates and numeric closes > 0; dates unique,
    increasing and without a missing day; the last date a Sunday (the model forecasts the ISO
    week after a complete one); at least `window_weeks` complete ISO weeks. A leading partial
    week is allowed and ignored. Raises InvalidRecentCloses naming the first problem.
    """
    if not isinstance(frame, pd.DataFrame):
        raise InvalidRecentCloses(
            f"expected a DataFrame with columns {list(INPUT_COLUMNS)}, got {type(frame).__name__}"
        )
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidRecentCloses(
            f"the recent closes lack column(s) {missing}: send one row per day with "
            f"{DATE!r} (YYYY-MM-DD) and {CLOSE!r} (dollars)"
        )
    if frame.empty:
        raise InvalidRecentCloses(
            f"no closes were sent: send at least {window_weeks} complete ISO weeks of daily closes"
        )
    dates = pd.to_datetime(frame[DATE], errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise InvalidRecentCloses(
            f"row {row}: date {_shown(frame[DATE].iloc[row])} is not a date; use YYYY-MM-DD"
        )
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = dates.dt.tz_localize(None)
    dates = dates.dt.normalize().reset_index(drop=True)
    closes = pd.to_numeric(frame[CLOSE], errors="coerce").astype("float64").reset_index(drop=True)
    if closes.isna().any() or not np.isfinite(closes.to_numpy()).all():
        row = int(np.flatnonzero(~np.isfinite(closes.to_numpy()))[0])
        raise InvalidRecentCloses(
            f"close on {_day(dates[row])} is {_shown(frame[CLOSE].iloc[row])}, not a number: "
            "every day needs a close in dollars"
        )
    if (closes <= 0).any():
        row = int(np.flatnonzero((closes <= 0).to_numpy())[0])
        raise InvalidRecentCloses(
            f"close on {_day(dates[row])} is {closes[row]}: closes must be > 0 dollars"
        )
    duplicated = dates.duplicated()
    if duplicated.any():
        raise InvalidRecentCloses(
            f"date {_day(dates[duplicated].iloc[0])} appears more than once: send one close per day"
        )
    steps = dates.diff().iloc[1:]
    backwards = steps < pd.Timedelta(0)
    if backwards.any():
        row = int(steps.index[backwards.to_numpy()][0])
        raise InvalidRecentCloses(
            f"dates are not sorted: {_day(dates[row])} (row {row}) comes after "
            f"{_day(dates[row - 1])}; sort the closes by date, oldest first"
        )
    gaps = steps > ONE_DAY
    if gaps.any():
        row = int(steps.index[gaps.to_numpy()][0])
        n_missing = sum(int(step / ONE_DAY) - 1 for step in steps[gaps])
        raise InvalidRecentCloses(
            f"a gap in the closes: no close for {_day(dates[row - 1] + ONE_DAY)} (between "
            f"{dates[row - 1].date()} and {dates[row].date()}; {n_missing} day(s) missing in "
            "all); send every calendar day"
        )
    last = dates.iloc[-1]
    if last.weekday() != SUNDAY:
        week_start = last - pd.Timedelta(days=last.weekday())
        raise InvalidRecentCloses(
            f"the closes end on {_day(last)}, inside an ISO week: the model forecasts the week "
            f"after a complete Monday-Sunday week, so end on a Sunday (drop "
            f"{week_start.date()}..{last.date()}, or wait for that week to end)"
        )
    first_monday = dates.iloc[0] + pd.Timedelta(days=(7 - dates.iloc[0].weekday()) % 7)
    complete = int((last - first_monday) / ONE_DAY + 1) // DAYS_PER_WEEK
    if complete < window_weeks:
        needed_from = last - pd.Timedelta(days=window_weeks * DAYS_PER_WEEK - 1)
        raise InvalidRecentCloses(
            f"only {complete} complete ISO week(s) of closes (up to {last.date()}); the model "
            f"needs {window_weeks}: send daily closes from {_day(needed_from)} to {last.date()}"
        )
    return pd.DataFrame({DATE: dates, CLOSE: closes})


class WeeklyForecastModel(PythonModel):
    """Daily closes -> ISO weeks -> normalised window -> LSTM -> next week in dollars + bands.

    The ISO-week grouping, normalisation and inverse are the pipeline's own (`forecasting`), so
    the numbers equal the nightly forecast for the same week.
    """

    def __init__(self) -> None:
        self._forecaster: SavedLSTM | None = None
        self._calibration: IntervalCalibration | None = None

    def load_context(self, context: PythonModelContext) -> None:
        metadata = json.loads(Path(context.artifacts[METADATA_ARTIFACT]).read_text())
        intervals = json.loads(Path(context.artifacts[INTERVALS_ARTIFACT]).read_text())
        network = load_model(Path(context.artifacts[NETWORK_ARTIFACT]))
        self._forecaster = from_keras(network, ModelMetadata.from_dict(metadata), name="served")
        self._calibration = IntervalCalibration.from_dict(intervals)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self._forecaster is None or self._calibration is None:
            raise RuntimeError("the model's artifacts are not loaded (load_context was not run)")
        return forecast_next_week(self._forecaster, self._calibration, model_input)


def forecast_next_week(
    forecaster: SavedLSTM, calibration: IntervalCalibration, recent_closes: pd.DataFrame
) -> pd.DataFrame:
    """The seven days after the last (Sunday) close: OUTPUT_COLUMNS, one row per day."""
    assert forecaster.metadata is not None  # a SavedLSTM always has it
    window_weeks = forecaster.metadata.config.window_weeks
    daily = check_recent_closes(recent_closes, window_weeks=window_weeks)
    target_week = daily[DATE].iloc[-1] + ONE_DAY
    # Only the window's weeks feed the network: a request with years of history costs the same.
    window = daily.tail(window_weeks * DAYS_PER_WEEK)
    point = forecaster.predict(group_iso_weeks(window), [target_week])[0]
    columns: dict[str, Any] = {
        DATE: pd.date_range(target_week, periods=DAYS_PER_WEEK, freq="D"),
        CLOSE: point,
    }
    scale = calibration.scale_for(daily[CLOSE].to_numpy())  # the volatility before the week
    for level, (lower_name, upper_name) in BAND_LEVELS.items():
        columns[lower_name], columns[upper_name] = calibration.bounds(point, level, scale)
    return pd.DataFrame(columns, columns=list(OUTPUT_COLUMNS))


# MLflow loads this file as a module with a generated name and takes the model from set_model();
# importing it as part of the `flows` package must not.
if __name__ != "flows.serving.pyfunc_model":
    set_model(WeeklyForecastModel())
