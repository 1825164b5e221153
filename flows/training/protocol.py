"""What the flow and the training process exchange: the job, its result, the files in a job's
workdir, and how an error raised in the child comes back to the parent as the same error."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pricecast import errors
from pricecast.urls import mask_secrets

if TYPE_CHECKING:
    import pandas as pd

#: The files of a job's workdir: the job (JSON), the closes (a pandas pickle), the result (JSON).
JOB_FILE = "job.json"
CLOSES_FILE = "closes.pkl"
RESULT_FILE = "result.json"
#: The child's job, as `module:function` taking the workdir and returning a JSON-able result.
DEFAULT_JOB_FUNCTION = "flows.training.job:run"
#: A model's part in a night's comparison (also the `pricecast.role` tag of its MLflow run).
ModelRole = Literal["candidate", "champion", "baseline"]
#: A parsed JSON object (result.json, a protocol line): its values are whatever JSON holds.
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class TrainingJob:
    """Everything the child needs; nothing is read from the environment there."""

    ticker: str
    as_of: str
    holdout_weeks: int
    strategies: list[str]
    seed: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    fingerprint: str
    epochs: int | None = None
    window_weeks: int | None = None
    champion_uri: str | None = None
    champion_version: int | None = None
    champion_metadata: dict[str, str] = field(default_factory=dict)
    #: Monday of the week to forecast with every model (None: no forecast due tonight).
    forecast_week: str | None = None
    #: False: only forecast with the champion (no backtest, no MLflow runs).
    score: bool = True

    @property
    def activity(self) -> str:
        """What the child is doing, for messages: 'training BTC-USD as of 2020-09-06'."""
        doing = "training" if self.score else "forecasting with the champion of"
        return f"{doing} {self.ticker} as of {self.as_of}"


@dataclass(frozen=True)
class ModelOutcome:
    """One model's result: scores on the held-out weeks, its MLflow run, next week's closes."""

    name: str
    role: ModelRole
    rmse: float | None
    mape: float | None
    weekly_rmse: list[float]
    weekly_mape: list[float]
    train_seconds: float
    predict_seconds: float
    params: dict[str, str]
    metadata: dict[str, str]
    run_id: str | None
    model_uri: str | None
    model_id: str | None
    next_week: list[float] | None
    #: The split-conformal calibration (`IntervalCalibration.to_dict()`) of next week's bands:
    #: tonight's held-out residuals, or the one logged with the champion on a forecast-only night.
    intervals: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainingResult:
    held_out_weeks: list[str]
    train_until: str | None
    models: list[ModelOutcome]
    timings: dict[str, float]
    child_seconds: float = 0.0

    def model(self, name: str) -> ModelOutcome | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def train_seconds(self) -> float:
        return sum(m.train_seconds for m in self.models)

    def to_payload(self) -> JsonObject:
        """The JSON form the child writes (the parent measures `child_seconds` itself)."""
        payload = asdict(self)
        del payload["child_seconds"]
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TrainingResult:
        return cls(
            held_out_weeks=list(payload["held_out_weeks"]),
            train_until=payload["train_until"],
            models=[ModelOutcome(**m) for m in payload["models"]],
            timings={k: float(v) for k, v in payload["timings"].items()},
        )


# --- the workdir --------------------------------------------------------------------------------


def write_job(workdir: Path, job: TrainingJob, closes: Sequence[tuple[dt.date, float]]) -> None:
    import pandas as pd

    from forecasting.weeks import CLOSE, DATE

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / JOB_FILE).write_text(json.dumps(asdict(job), indent=2))
    pd.DataFrame(closes, columns=[DATE, CLOSE]).to_pickle(workdir / CLOSES_FILE)


def read_job(workdir: Path) -> TrainingJob:
    return TrainingJob(**json.loads((workdir / JOB_FILE).read_text()))


def read_closes(workdir: Path) -> pd.DataFrame:
    """The daily closes (`date`, `close`) the parent wrote for the job."""
    import pandas as pd

    closes: pd.DataFrame = pd.read_pickle(workdir / CLOSES_FILE)
    return closes


def write_result(workdir: Path, payload: Mapping[str, object]) -> None:
    (workdir / RESULT_FILE).write_text(json.dumps(payload))


def read_result(workdir: Path) -> JsonObject | None:
    """What the child wrote (a result or {"error": ...}); None if it wrote nothing."""
    path = workdir / RESULT_FILE
    if not path.is_file():
        return None
    payload: JsonObject = json.loads(path.read_text())
    return payload


# --- errors across the process boundary ---------------------------------------------------------


def encode_error(exc: BaseException) -> JsonObject:
    """An error as result.json carries it. A pricecast error travels as its kind (the nearest
    class in `pricecast.errors`) and message; anything else is marked unexpected."""
    if isinstance(exc, errors.PricecastError):
        kind = next(c for c in type(exc).__mro__ if getattr(errors, c.__name__, None) is c)
        return {"type": kind.__name__, "message": str(exc)}
    return {"type": type(exc).__name__, "message": str(exc), "unexpected": True}


def decode_error(error: Mapping[str, object], *, activity: str, log: Path) -> errors.PricecastError:
    """The parent's side of `encode_error`: the same pricecast error kind with the same message;
    an unexpected error becomes one `TrainingFailed` line naming the job's log (traceback there)."""
    name = str(error.get("type", ""))
    message = str(error.get("message", ""))
    kind = getattr(errors, name, None)
    if (
        not error.get("unexpected")
        and isinstance(kind, type)
        and issubclass(kind, errors.PricecastError)
    ):
        return kind(message)
    first_line = mask_secrets((message.strip().splitlines() or [""])[0])[:300]
    return errors.TrainingFailed(
        f"{activity} failed with {name}: {first_line}; the traceback is in {log}; "
        "the champion is unchanged"
    )
