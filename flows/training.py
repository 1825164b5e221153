"""Train, score and log tonight's candidates in a child process (`python -m flows.training JOB`).

TensorFlow keeps memory after every fit(), so a long-running flow server never imports it: the
parent writes a job (JSON + the closes as a pickle), the child trains `retrain` and `fresh`,
re-scores the champion and naive on the same held-out weeks, logs nested MLflow runs (models
included) and writes a JSON result. The child's memory goes back to the OS when it exits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pricecast import errors

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
CLOSES_FILE = "closes.pkl"
LOG_FILE = "child.log"
STRATEGIES = ("retrain", "fresh")


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


@dataclass(frozen=True)
class ModelOutcome:
    """One model's result: scores on the held-out weeks, its MLflow run, next week's closes."""

    name: str
    role: str  # "candidate" | "champion" | "baseline"
    rmse: float | None
    mape: float | None
    weekly_rmse: list[float]
    weekly_mape: list[float]
    train_seconds: float
    predict_seconds: float
    params: dict[str, Any]
    metadata: dict[str, Any]
    run_id: str | None
    model_uri: str | None
    model_id: str | None
    next_week: list[float] | None


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


# --- parent side --------------------------------------------------------------------------------


def run_in_child(
    job: TrainingJob,
    closes: Sequence[tuple[dt.date, float]],
    *,
    workdir: Path,
    timeout_seconds: float | None = None,
) -> TrainingResult:
    """Run `job` in a fresh Python process and return its result.

    Errors the child raises as pricecast errors come back as the same kind with the same
    message; a crash raises RuntimeError with the tail of the child's log.
    """
    import pandas as pd

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / JOB_FILE).write_text(json.dumps(asdict(job), indent=2))
    pd.DataFrame(closes, columns=["date", "close"]).to_pickle(workdir / CLOSES_FILE)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    started = time.perf_counter()
    with open(workdir / LOG_FILE, "wb") as log:
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "flows.training", str(workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise errors.PricecastError(
                f"training for {job.ticker} as of {job.as_of} took longer than "
                f"{timeout_seconds:g} s and was stopped; see {workdir / LOG_FILE}"
            ) from None
    elapsed = time.perf_counter() - started
    result_file = workdir / RESULT_FILE
    payload = json.loads(result_file.read_text()) if result_file.is_file() else None
    if completed.returncode != 0 or payload is None or "error" in payload:
        raise _child_error(payload, completed.returncode, workdir / LOG_FILE)
    models = [ModelOutcome(**m) for m in payload["models"]]
    return TrainingResult(
        held_out_weeks=payload["held_out_weeks"],
        train_until=payload["train_until"],
        models=models,
        timings=payload["timings"],
        child_seconds=elapsed,
    )


def _child_error(payload: Mapping[str, Any] | None, code: int, log: Path) -> Exception:
    if payload and "error" in payload:
        kind = getattr(errors, payload["error"].get("type", ""), None)
        message = payload["error"].get("message", "")
        if isinstance(kind, type) and issubclass(kind, errors.PricecastError):
            return kind(message)
        return RuntimeError(f"training child failed: {message} (log: {log})")
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    return RuntimeError(f"training child exited with code {code}; log {log}:\n{tail}")


# --- child side ---------------------------------------------------------------------------------


def _candidates(job: TrainingJob, champion: Any) -> list[Any]:
    from forecasting import model as lstm
    from forecasting.candidates import FreshLSTM, RetrainLSTM

    config = lstm.LSTMConfig().with_overrides(epochs=job.epochs, window_weeks=job.window_weeks)
    built = []
    for strategy in job.strategies:
        if strategy == "fresh":
            built.append(FreshLSTM(config, seed=job.seed, ticker=job.ticker))
        elif strategy == "retrain":
            built.append(
                RetrainLSTM(
                    base=champion,
                    config=config,
                    epochs=job.epochs,
                    seed=job.seed,
                    ticker=job.ticker,
                )
            )
        else:
            raise errors.ConfigError(
                f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}"
            )
    return built


def _predictions_csv(held_out: Any, actuals: Any, predictions: Any) -> str:
    import pandas as pd

    rows = []
    for week, actual_row, predicted_row in zip(held_out, actuals, predictions, strict=True):
        for day in range(7):
            date = (week + pd.Timedelta(days=day)).date().isoformat()
            rows.append(
                f"{week.date().isoformat()},{date},{actual_row[day]:.6f},"
                f"{predicted_row[day]:.6f},{predicted_row[day] - actual_row[day]:.6f}"
            )
    return "week_start,date,actual_close,predicted_close,error\n" + "\n".join(rows) + "\n"


def _plotter(name: str, held_out: Any, actuals: Any, predictions: Any) -> Any:
    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        days = [w + pd.Timedelta(days=d) for w in held_out for d in range(7)]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(days, actuals.ravel(), label="actual", color="black", linewidth=1.2)
        ax.plot(days, predictions.ravel(), label=name, color="tab:blue", linewidth=1.0)
        ax.set_title(f"{name}: forecast vs actual on the held-out weeks")
        ax.set_ylabel("close (USD)")
        ax.legend()
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)

    return plot


def _flat_params(description: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
        for k, v in description.items()
    }


def execute(job: TrainingJob, workdir: Path) -> dict[str, Any]:
    """The child's work; returns the JSON-able result (see TrainingResult)."""
    started = time.perf_counter()
    import numpy as np
    import pandas as pd

    from flows import tracking
    from forecasting.backtest import backtest
    from forecasting.baselines import Naive
    from forecasting.candidates import LSTMForecaster, from_keras
    from forecasting.weeks import group_iso_weeks

    timings: dict[str, float] = {"import_seconds": time.perf_counter() - started}
    as_of = dt.date.fromisoformat(job.as_of)
    daily = pd.read_pickle(workdir / CLOSES_FILE)
    weeks = group_iso_weeks(daily, as_of)

    mark = time.perf_counter()
    champion = None
    if job.champion_uri:
        keras_model = tracking.load_keras_model(job.tracking_uri, job.champion_uri)
        champion = from_keras(keras_model, job.champion_metadata, name="champion")
    timings["load_champion_seconds"] = time.perf_counter() - mark
    forecast_week = pd.Timestamp(job.forecast_week) if job.forecast_week else None

    if not job.score:
        models = []
        for forecaster, role in (
            (champion, "champion"),
            (Naive().fit(weeks, train_until=None), "baseline"),
        ):
            if forecaster is None:
                continue
            next_week = None
            if forecast_week is not None:
                next_week = forecaster.predict(weeks, [forecast_week])[0].tolist()
            models.append(
                asdict(
                    ModelOutcome(
                        forecaster.name,
                        role,
                        None,
                        None,
                        [],
                        [],
                        0.0,
                        0.0,
                        {},
                        {},
                        None,
                        None,
                        None,
                        next_week,
                    )
                )
            )
        timings["total_seconds"] = time.perf_counter() - started
        return {"held_out_weeks": [], "train_until": None, "models": models, "timings": timings}

    candidates = _candidates(job, champion)
    scored: list[Any] = [*candidates]
    if champion is not None:
        scored.append(champion)
    scored.append(Naive())
    windows = [c.config.window_weeks for c in candidates if hasattr(c, "config")]
    if champion is not None and champion.metadata is not None:
        windows.append(champion.metadata.config.window_weeks)
    mark = time.perf_counter()
    result = backtest(
        weeks,
        as_of=as_of,
        candidates=scored,
        holdout_weeks=job.holdout_weeks,
        window_weeks=max(windows) if windows else 40,
    )
    timings["backtest_seconds"] = time.perf_counter() - mark

    mark = time.perf_counter()
    by_name = {c.name: c for c in scored}
    models = []
    # An input example for the signature: the first held-out week's window.
    for outcome in result.candidates:
        forecaster = by_name[outcome.name]
        role = (
            "champion"
            if forecaster is champion
            else "candidate"
            if forecaster in candidates
            else "baseline"
        )
        next_week = None
        if forecast_week is not None:
            next_week = forecaster.predict(weeks, [forecast_week])[0].tolist()
        is_lstm = isinstance(forecaster, LSTMForecaster) and role == "candidate"
        metadata = forecaster.metadata.to_dict() if is_lstm and forecaster.metadata else {}
        params = {
            **_flat_params(outcome.description),
            "as_of": job.as_of,
            "data_fingerprint": job.fingerprint,
            "held_out_first_week": result.held_out_weeks[0].date().isoformat(),
            "held_out_last_week": result.held_out_weeks[-1].date().isoformat(),
            "holdout_weeks": job.holdout_weeks,
        }
        if role == "champion":
            params["champion_version"] = job.champion_version
        input_example = None
        if is_lstm:
            from forecasting.windows import make_windows

            cfg = forecaster.metadata.config
            input_example = make_windows(
                weeks,
                result.held_out_weeks[:1],
                window_weeks=cfg.window_weeks,
                normalisation=cfg.normalisation,
            ).inputs.astype("float32")
        logged = tracking.log_candidate_run(
            tracking_uri=job.tracking_uri,
            experiment_id=job.experiment_id,
            parent_run_id=job.parent_run_id,
            name=outcome.name,
            role=role,
            params=params,
            metrics={
                "rmse": outcome.rmse,
                "mape": outcome.mape,
                "train_seconds": outcome.train_seconds,
            },
            weekly_metrics={
                "weekly_rmse": outcome.weekly_rmse.tolist(),
                "weekly_mape": outcome.weekly_mape.tolist(),
            },
            predictions_csv=_predictions_csv(
                result.held_out_weeks, result.actuals, outcome.predictions
            ),
            plot=_plotter(outcome.name, result.held_out_weeks, result.actuals, outcome.predictions),
            keras_model=forecaster.model if is_lstm else None,
            input_example=input_example,
            model_metadata=metadata,
            tags={"as_of": job.as_of, "ticker": job.ticker},
        )
        models.append(
            asdict(
                ModelOutcome(
                    name=outcome.name,
                    role=role,
                    rmse=float(outcome.rmse),
                    mape=float(outcome.mape),
                    weekly_rmse=[float(x) for x in np.asarray(outcome.weekly_rmse)],
                    weekly_mape=[float(x) for x in np.asarray(outcome.weekly_mape)],
                    train_seconds=float(outcome.train_seconds),
                    predict_seconds=float(outcome.predict_seconds),
                    params={k: str(v) for k, v in params.items()},
                    metadata={k: str(v) for k, v in metadata.items()},
                    run_id=logged.run_id,
                    model_uri=logged.model_uri,
                    model_id=logged.model_id,
                    next_week=next_week,
                )
            )
        )
    timings["logging_seconds"] = time.perf_counter() - mark
    timings["total_seconds"] = time.perf_counter() - started
    return {
        "held_out_weeks": [w.date().isoformat() for w in result.held_out_weeks],
        "train_until": result.train_until.date().isoformat(),
        "models": models,
        "timings": timings,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    workdir = Path(args[0])
    try:
        job = TrainingJob(**json.loads((workdir / JOB_FILE).read_text()))
        payload = execute(job, workdir)
        code = 0
    except errors.PricecastError as exc:
        payload = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        code = 1
    except Exception as exc:
        traceback.print_exc()
        payload = {"error": {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"}}
        code = 1
    (workdir / RESULT_FILE).write_text(json.dumps(payload))
    return code


if __name__ == "__main__":
    sys.exit(main())
