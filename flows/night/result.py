"""What a night produced, typed: the flow returns a `NightResult`; the CLI, the demo, the backfill
and the Prefect artifact read it, and `to_dict()` is `pricecast nightly --json`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Role = Literal["candidate", "champion", "baseline"]


@dataclass(frozen=True)
class ModelScore:
    """One model scored on the night's held-out weeks (MAPE in percent, RMSE in dollars)."""

    name: str
    role: Role
    mape: float
    rmse: float
    train_seconds: float
    mlflow_run_id: str | None
    #: The registry version it became tonight (candidates only).
    version: int | None = None


@dataclass(frozen=True)
class NightDecision:
    action: Literal["promote", "keep"]
    candidate: str | None
    reason: str
    #: The best candidate's Diebold-Mariano p-value (the larger of vs naive and vs champion).
    p_value: float | None = None


@dataclass(frozen=True)
class ForecastDay:
    date: dt.date
    close: float
    #: The 80 % and 95 % prediction interval in dollars (None: forecast without bands).
    lower_80: float | None = None
    upper_80: float | None = None
    lower_95: float | None = None
    upper_95: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "date": self.date.isoformat(),
            "close": self.close,
            "lower_80": self.lower_80,
            "upper_80": self.upper_80,
            "lower_95": self.lower_95,
            "upper_95": self.upper_95,
        }


@dataclass(frozen=True)
class NightForecast:
    """Next week's closes, stored in `forecasts`, and who made them."""

    week_start: dt.date
    model_name: str
    model_version: int | None
    is_baseline: bool
    rows_inserted: int
    days: tuple[ForecastDay, ...]

    @property
    def made_by(self) -> str:
        return "naive baseline" if self.is_baseline else f"{self.model_name} v{self.model_version}"


@dataclass(frozen=True)
class RealisedAccuracy:
    """Past forecasts scored against the closes that actually happened."""

    days: int
    rmse: float | None
    mape: float | None
    weeks_scored_tonight: int = 0
    #: Fraction of forecast days (stored with bands) whose actual fell in the 80 / 95 % band.
    coverage_80: float | None = None
    coverage_95: float | None = None
    #: How many of `days` had bands (older forecasts and naive's may have none).
    interval_days: int = 0


@dataclass(frozen=True)
class MlflowRefs:
    experiment_id: str
    parent_run_id: str
    #: A link to the parent run in the MLflow UI (or the run's URI on a local store).
    parent_run: str
    #: The MLflow UI for a person's browser (None on a local store): links to runs and versions.
    ui: str | None = None
    #: The experiment's runs table (scores and decisions as columns); None without a UI.
    runs_table: str | None = None


@dataclass(frozen=True)
class NightResult:
    ticker: str
    as_of: dt.date
    source: str | None
    flow_run_id: str | None
    trained: bool
    train_reason: str
    latest_complete_week: dt.date | None
    champion_version: int | None
    mlflow: MlflowRefs
    realised: RealisedAccuracy
    timings: Mapping[str, float]
    #: The ingest summary (`IngestSummary.to_dict()`) when the night ingested a source.
    ingest: Mapping[str, object] | None = None
    candidates: tuple[ModelScore, ...] = ()
    held_out_weeks: tuple[str, ...] = ()
    decision: NightDecision | None = None
    promoted_version: int | None = None
    #: What the night noticed on the way (e.g. the champion alias moved outside pricecast).
    notes: tuple[str, ...] = ()
    forecast: NightForecast | None = None

    @property
    def promoted(self) -> str | None:
        """The candidate promoted tonight, if any."""
        if self.decision is None or self.decision.action != "promote":
            return None
        return self.decision.candidate

    def to_dict(self) -> dict[str, object]:
        """The `pricecast nightly --json` shape (dates as ISO strings)."""
        forecast = self.forecast
        return {
            "ticker": self.ticker,
            "as_of": self.as_of.isoformat(),
            "source": self.source,
            "flow_run_id": self.flow_run_id,
            "trained": self.trained,
            "train_reason": self.train_reason,
            "latest_complete_week": _iso(self.latest_complete_week),
            "ingest": dict(self.ingest) if self.ingest is not None else None,
            "candidates": [
                {
                    "name": c.name,
                    "role": c.role,
                    "rmse": c.rmse,
                    "mape": c.mape,
                    "train_seconds": c.train_seconds,
                    "mlflow_run_id": c.mlflow_run_id,
                    "version": c.version,
                }
                for c in self.candidates
            ],
            "held_out_weeks": list(self.held_out_weeks),
            "decision": None
            if self.decision is None
            else {
                "action": self.decision.action,
                "candidate": self.decision.candidate,
                "reason": self.decision.reason,
                "p_value": self.decision.p_value,
            },
            "promoted": self.promoted,
            "promoted_version": self.promoted_version,
            "notes": list(self.notes),
            "champion_version": self.champion_version,
            "forecast": None
            if forecast is None
            else {
                "week_start": forecast.week_start.isoformat(),
                "model_name": forecast.model_name,
                "model_version": forecast.model_version,
                "is_baseline": forecast.is_baseline,
                "rows_inserted": forecast.rows_inserted,
                "closes": [d.to_dict() for d in forecast.days],
            },
            "realised": {
                "days": self.realised.days,
                "rmse": self.realised.rmse,
                "mape": self.realised.mape,
                "weeks_scored_tonight": self.realised.weeks_scored_tonight,
                "coverage_80": self.realised.coverage_80,
                "coverage_95": self.realised.coverage_95,
                "interval_days": self.realised.interval_days,
            },
            "mlflow": {
                "experiment_id": self.mlflow.experiment_id,
                "parent_run_id": self.mlflow.parent_run_id,
                "parent_run": self.mlflow.parent_run,
                "runs_table": self.mlflow.runs_table,
            },
            "timings": dict(self.timings),
        }


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day is not None else None
