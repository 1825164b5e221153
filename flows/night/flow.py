"""The nightly Prefect flow: ingest, rebuild weeks, train when a week has completed, score against
the champion and naive on the same held-out weeks, promote only what is better, forecast next
week, score past forecasts. Decisions are pure functions here; tasks are thin wrappers on I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from flows.night.policy import (
    Score,
    TrainingPlan,
    decide_promotion,
    decide_training,
    forecast_week_due,
    pick_forecaster,
)
from flows.tracking.promotion import AppliedDecision, TrainedCandidate, apply_decision
from flows.tracking.tracker import ChampionRef, Tracker, data_fingerprint, model_name
from flows.training.worker import (
    STRATEGIES,
    TrainingJob,
    TrainingResult,
    prewarm_worker,
    run_in_child,
)
from forecasting.calendar import (
    SUNDAY,
    last_complete_week,
    training_windows_available,
    yesterday_utc,
)
from pricecast.errors import ConfigError, ServiceUnavailable
from pricecast.settings import Settings, get_settings

#: Windows the candidates need before the held-out span: `retrain` with no champion first
#: trains fresh up to 10 weeks before the span (forecasting.candidates), then fine-tunes.
MIN_TRAINING_WINDOWS = 12
IO_RETRIES = 2
T = TypeVar("T")
DAYS = 7
IO_RETRY_DELAYS = [1.0, 4.0]


# --- pure decisions -----------------------------------------------------------------------------


def realised_accuracy(pairs: Sequence[tuple[float, float]]) -> dict[str, float | int | None]:
    """RMSE ($) and MAPE (%) over every forecast day with a known actual: (actual, predicted)."""
    if not pairs:
        return {"days": 0, "rmse": None, "mape": None}
    import numpy as np

    from forecasting.metrics import mape, rmse

    actual = np.array([a for a, _ in pairs], dtype="float64")
    predicted = np.array([p for _, p in pairs], dtype="float64")
    return {"days": len(pairs), "rmse": rmse(actual, predicted), "mape": mape(actual, predicted)}


def markdown_report(result: Mapping[str, Any]) -> str:
    """The run's Prefect artifact: scores, decision, champion, MLflow runs, realised accuracy."""
    lines = [f"# Nightly {result['ticker']} as of {result['as_of']}", ""]
    lines.append(f"- trained: **{result['trained']}** ({result['train_reason']})")
    decision = result.get("decision")
    if decision:
        lines.append(f"- decision: **{decision['action']}** — {decision['reason']}")
    champion = result.get("champion_version")
    lines.append(
        f"- champion: {model_name(result['ticker'])} version {champion}"
        if champion is not None
        else "- champion: none (naive serves)"
    )
    if result.get("candidates"):
        lines += [
            "",
            "| model | role | MAPE % | RMSE $ | train s | MLflow run |",
            "|---|---|---:|---:|---:|---|",
        ]
        for c in result["candidates"]:
            lines.append(
                f"| {c['name']} | {c['role']} | {c['mape']:.3f} | {c['rmse']:.2f} | "
                f"{c['train_seconds']:.1f} | {c.get('mlflow_run_id') or ''} |"
            )
        weeks = result.get("held_out_weeks") or []
        if weeks:
            lines.append(f"\nHeld-out weeks: {weeks[0]} .. {weeks[-1]} ({len(weeks)})")
    forecast = result.get("forecast")
    if forecast:
        flag = " (baseline)" if forecast["is_baseline"] else ""
        lines += ["", f"## Forecast by {forecast['model_name']} v{forecast['model_version']}{flag}"]
        lines += ["", "| date | close |", "|---|---:|"]
        lines += [f"| {d['date']} | {d['close']:.2f} |" for d in forecast["closes"]]
    realised = result.get("realised") or {}
    if realised.get("days"):
        lines += [
            "",
            f"Realised accuracy of past forecasts: {realised['days']} day(s), "
            f"MAPE {realised['mape']:.3f} %, RMSE {realised['rmse']:.2f} $ "
            f"({realised['weeks_scored_tonight']} week(s) scored tonight)",
        ]
    mlflow = result.get("mlflow") or {}
    if mlflow.get("parent_run"):
        lines += ["", f"MLflow: {mlflow['parent_run']}"]
    timings = result.get("timings") or {}
    lines += [
        "",
        f"Timings: total {timings.get('total_seconds', 0):.1f} s, "
        f"training {timings.get('train_seconds', 0):.1f} s",
    ]
    return "\n".join(lines) + "\n"


# --- tasks: thin wrappers, retries only where I/O can fail transiently --------------------------
# Large values (the closes, the training result) travel wrapped in `quote`, so Prefect does not
# walk them element by element looking for futures (seconds per night otherwise).


def opaque(value: T) -> T:
    """`value` wrapped in Prefect's `quote`; the task receives the value itself."""
    return cast(T, quote(value))


def _transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry database and MLflow outages; never bad data or a bad setting."""
    return isinstance(state.data, ServiceUnavailable | OperationalError | InterfaceError)


def io_task(name: str) -> Any:
    return task(
        name=name,
        retries=IO_RETRIES,
        retry_delay_seconds=IO_RETRY_DELAYS,
        retry_condition_fn=_transient,
        cache_policy=NO_CACHE,
    )


@io_task("ingest")
def ingest_prices(database_url: str, ticker: str, source: str, as_of: dt.date) -> dict[str, Any]:
    from flows.ingest.load import ingest

    return ingest(database_url=database_url, ticker=ticker, source=source, as_of=as_of).to_dict()


@io_task("read prices")
def read_prices(engine: Engine, ticker: str, as_of: dt.date) -> tuple[list[Any], Any]:
    """The stored closes up to as_of, and their ISO weeks."""
    import pandas as pd

    from forecasting.weeks import group_iso_weeks
    from storage.db import session_scope
    from storage.prices import read_closes

    with session_scope(engine) as session:
        closes = read_closes(session, ticker=ticker, as_of=as_of)
    daily = pd.DataFrame(closes, columns=["date", "close"])
    return closes, group_iso_weeks(daily, as_of)


@io_task("plan night")
def plan_night(
    engine: Engine,
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    latest_complete: dt.date | None,
    flow_run_id: str | None,
) -> dict[str, Any]:
    """Open the night's row; gather what the decisions need: earlier nights, the champion,
    whether tonight's forecast is already stored."""
    from storage.db import session_scope
    from storage.runs import begin_run, forecasts_for, last_trained_run

    with session_scope(engine) as session:
        begin_run(
            session,
            ticker=ticker,
            as_of=as_of,
            last_complete_week=latest_complete,
            flow_run_id=flow_run_id,
        )
        last = last_trained_run(session, ticker=ticker, as_of=as_of)
        stored_forecast = len(forecasts_for(session, ticker=ticker, as_of=as_of))
    return {
        "last_trained_week": last.last_complete_week if last else None,
        "last_trained_had_champion": bool(last and last.champion_version is not None),
        "stored_forecast_days": stored_forecast,
        "champion": tracker.champion(ticker),
    }


@io_task("start MLflow run")
def start_mlflow_run(
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    flow_run_id: str | None,
    params: Mapping[str, Any],
) -> tuple[str, str]:
    experiment_id = tracker.ensure_experiment(ticker)
    run_id = tracker.start_parent_run(
        experiment_id=experiment_id,
        ticker=ticker,
        as_of=as_of,
        flow_run_id=flow_run_id,
        params=params,
    )
    return experiment_id, run_id


@task(name="train and score (child process)", cache_policy=NO_CACHE)
def train_and_score(
    job: TrainingJob, closes: Sequence[tuple[dt.date, float]], settings: Settings
) -> TrainingResult:
    workroot = settings.resolved_home / "work"
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{job.ticker}-{job.as_of}-", dir=workroot) as tmp:
        return run_in_child(
            job,
            closes,
            workdir=Path(tmp),
            max_jobs=settings.training_worker_max_jobs,
            idle_seconds=settings.training_worker_idle_seconds,
            log_path=workroot / "training-worker.log",
        )


def promotion_scores(
    result: TrainingResult,
) -> tuple[list[Score], Score | None, Score]:
    """(candidates, champion, naive) scores from the training result."""

    def score(name: str) -> Score | None:
        model = result.model(name)
        if model is None or model.mape is None or model.rmse is None:
            return None
        return Score(name, model.mape, model.rmse)

    naive = score("naive")
    if naive is None:
        raise RuntimeError("naive was not scored; the training result is incomplete")
    candidates = [s for m in result.models if m.role == "candidate" if (s := score(m.name))]
    return candidates, score("champion"), naive


@task(name="promotion gate", cache_policy=NO_CACHE)
def promote_if_better(
    tracker: Tracker,
    engine: Engine,
    ticker: str,
    as_of: dt.date,
    result: TrainingResult,
    champion: ChampionRef | None,
    parent_run_id: str,
    margin: float,
) -> AppliedDecision:
    """Decide (pure) and apply: versions, audit row, alias. No retries: a half-applied attempt
    is rolled back, and rerunning the night redoes it."""
    candidates, champion_score, naive = promotion_scores(result)
    decision = decide_promotion(
        candidates,
        champion=champion_score,
        naive=naive,
        margin=margin,
        champion_version=champion.version if champion else None,
    )
    trained = [
        TrainedCandidate(
            name=m.name,
            score=Score(m.name, m.mape or 0.0, m.rmse or 0.0),
            run_id=m.run_id or "",
            model_uri=m.model_uri or "",
            model_id=m.model_id,
            metadata=m.metadata,
        )
        for m in result.models
        if m.role == "candidate" and m.model_uri
    ]
    return apply_decision(
        tracker=tracker,
        engine=engine,
        ticker=ticker,
        as_of=as_of,
        decision=decision,
        trained=trained,
        champion=champion,
        training_cutoff=dt.date.fromisoformat(result.train_until) if result.train_until else None,
        run_ids={"parent": parent_run_id, **{m.name: m.run_id for m in result.models}},
    )


@io_task("store forecast")
def store_forecast_rows(
    engine: Engine,
    ticker: str,
    as_of: dt.date,
    closes: Mapping[dt.date, float],
    model: str,
    version: int | None,
    is_baseline: bool,
) -> int:
    from storage.db import session_scope
    from storage.runs import store_forecast

    with session_scope(engine) as session:
        return store_forecast(
            session,
            ticker=ticker,
            as_of=as_of,
            closes=closes,
            model_name=model,
            model_version=version,
            is_baseline=is_baseline,
        )


@io_task("score past forecasts")
def score_past_forecasts(
    engine: Engine, ticker: str, as_of: dt.date, closes: Sequence[tuple[dt.date, float]]
) -> dict[str, Any]:
    from storage.db import session_scope
    from storage.runs import (
        add_forecast_score,
        complete_unscored_forecasts,
        record_actuals,
        scored_forecasts,
    )

    with session_scope(engine) as session:
        record_actuals(session, ticker=ticker, as_of=as_of, actuals=dict(closes))
        weeks_scored = 0
        for night, rows in complete_unscored_forecasts(session, ticker=ticker).items():
            scores = realised_accuracy([(r.actual_close or 0.0, r.predicted_close) for r in rows])
            add_forecast_score(
                session,
                ticker=ticker,
                as_of=night,
                forecasts=rows,
                rmse=float(scores["rmse"] or 0.0),
                mape=float(scores["mape"] or 0.0),
            )
            weeks_scored += 1
        pairs = [
            (r.actual_close or 0.0, r.predicted_close)
            for r in scored_forecasts(session, ticker=ticker, as_of=as_of)
        ]
    return {**realised_accuracy(pairs), "weeks_scored_tonight": weeks_scored}


@io_task("record night")
def record_night(
    engine: Engine, tracker: Tracker, parent_run_id: str, result: Mapping[str, Any]
) -> None:
    """The night's summary on its MLflow parent run, then the night marked done."""
    from storage.db import session_scope
    from storage.runs import finish_run

    metrics: dict[str, float] = {}
    for c in result.get("candidates", []):
        metrics[f"{c['name']}_mape"] = c["mape"]
        metrics[f"{c['name']}_rmse"] = c["rmse"]
    realised = result.get("realised") or {}
    if realised.get("days"):
        metrics["realised_mape"] = realised["mape"]
        metrics["realised_rmse"] = realised["rmse"]
    timings = result.get("timings") or {}
    for key in ("total_seconds", "train_seconds"):
        if key in timings:
            metrics[key] = timings[key]
    decision = result.get("decision") or {}
    tracker.log_summary(
        parent_run_id,
        metrics=metrics,
        tags={
            "trained": result["trained"],
            "decision": decision.get("action", "none"),
            "decision_reason": (decision.get("reason") or result["train_reason"])[:4000],
            "champion_version": result.get("champion_version"),
        },
    )
    tracker.end_run(parent_run_id)
    with session_scope(engine) as session:
        finish_run(
            session,
            ticker=result["ticker"],
            as_of=dt.date.fromisoformat(result["as_of"]),
            champion_version=result.get("champion_version"),
            timings=timings,
            mlflow_run_id=parent_run_id,
        )


def _artifact_key(ticker: str) -> str:
    return "nightly-" + re.sub(r"[^a-z0-9-]+", "-", ticker.lower()).strip("-")


@task(name="report", cache_policy=NO_CACHE)
def publish_report(result: Mapping[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=markdown_report(result),
        key=_artifact_key(result["ticker"]),
        description=f"nightly {result['ticker']} as of {result['as_of']}",
    )


# --- the flow -----------------------------------------------------------------------------------


@dataclass
class _Night:
    """What the flow has learned so far; turned into the result dict at the end."""

    ticker: str
    as_of: dt.date
    source: str | None
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    def lap(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[key] = round(self.timings.get(key, 0.0) + now - since, 3)
        return now


def _validate(strategies: Sequence[str], holdout_weeks: int, epochs: int | None) -> list[str]:
    chosen = [s.strip() for s in strategies if s.strip()]
    unknown = [s for s in chosen if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if holdout_weeks < 1:
        raise ConfigError(f"holdout_weeks must be >= 1, got {holdout_weeks}")
    if epochs is not None and epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    return chosen


def _explicit(settings: Settings, name: str) -> Any:
    """A setting only when the user set it (env), so the model's own defaults apply otherwise."""
    return getattr(settings, name) if name in settings.model_fields_set else None


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


@flow(name="nightly", log_prints=True)
def nightly(
    ticker: str = "BTC-USD",
    as_of: dt.date | None = None,
    source: str | None = "synthetic",
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    window_weeks: int | None = None,
) -> dict[str, Any]:
    """One night for one ticker, as of `as_of` (default: yesterday, UTC).

    1. ingest `source` up to as_of (None: use what is stored); 2. rebuild ISO weeks as of as_of;
    3. decide whether to train; 4. train retrain + fresh in a child process; 5. score them, the
    champion and naive on the same held-out weeks; 6. MLflow + promotion gate; 7. forecast next
    week when a week has just completed; 8. score earlier forecasts. Returns the result dict
    (`pricecast nightly --json`).
    """
    return run_night(
        ticker=ticker,
        as_of=as_of or yesterday_utc(),
        source=source,
        holdout_weeks=holdout_weeks,
        strategies=list(strategies) if strategies is not None else list(STRATEGIES),
        epochs=epochs,
        seed=seed,
        force=force,
        window_weeks=window_weeks,
    )


def run_night(
    *,
    ticker: str,
    as_of: dt.date,
    source: str | None,
    holdout_weeks: int | None,
    strategies: Sequence[str],
    epochs: int | None,
    seed: int,
    force: bool,
    window_weeks: int | None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The body of `nightly` (inside a flow run, so the tasks are tracked)."""
    from storage.db import ensure_schema, make_engine
    from storage.locks import ticker_lock

    settings = settings or get_settings()
    holdout = holdout_weeks if holdout_weeks is not None else settings.holdout_weeks
    chosen = _validate(strategies, holdout, epochs)
    epochs = epochs if epochs is not None else _explicit(settings, "epochs")
    window = window_weeks if window_weeks is not None else _explicit(settings, "window_weeks")
    night = _Night(ticker=ticker, as_of=as_of, source=source)
    engine = make_engine(settings.resolved_database_url)
    tracker = Tracker(settings.resolved_mlflow_uri, artifact_root=settings.mlflow_artifact_root)
    home = settings.resolved_home
    home.mkdir(parents=True, exist_ok=True)
    try:
        mark = time.perf_counter()
        ensure_schema(engine)
        with ticker_lock(
            engine,
            name=f"nightly:{ticker}",
            timeout_seconds=settings.lock_timeout_seconds,
            lock_dir=home / "locks",
        ):
            night.lap("lock_wait_seconds", mark)
            return _locked_night(
                night,
                engine=engine,
                tracker=tracker,
                settings=settings,
                holdout=holdout,
                strategies=chosen,
                epochs=epochs,
                window=window,
                seed=seed,
                force=force,
            )
    finally:
        engine.dispose()


def _locked_night(
    night: _Night,
    *,
    engine: Engine,
    tracker: Tracker,
    settings: Settings,
    holdout: int,
    strategies: Sequence[str],
    epochs: int | None,
    window: int | None,
    seed: int,
    force: bool,
) -> dict[str, Any]:
    ticker, as_of = night.ticker, night.as_of
    flow_run_id = _current_flow_run_id()
    parent_run_id: str | None = None
    begun = False
    result: dict[str, Any] = {
        "ticker": ticker,
        "as_of": as_of.isoformat(),
        "source": night.source,
        "flow_run_id": flow_run_id,
        "trained": False,
        "candidates": [],
        "decision": None,
        "promoted": None,
        "promoted_version": None,
        "forecast": None,
    }
    try:
        mark = time.perf_counter()
        if strategies and (force or as_of.weekday() == SUNDAY):
            # A week completes tonight, so training is likely: let the worker import
            # TensorFlow while this process ingests and plans.
            _prewarm(settings)
        # 1. ingest up to as_of
        if night.source:
            result["ingest"] = ingest_prices(
                settings.resolved_database_url, ticker, night.source, as_of
            )
        mark = night.lap("ingest_seconds", mark)
        # 2. weeks as of as_of
        closes, weeks = read_prices(engine, ticker, as_of)
        latest = last_complete_week(weeks, as_of)
        mark = night.lap("read_seconds", mark)
        # 3. decide whether to train (and whether a forecast is due)
        begun = True  # from here on the night has a row to mark failed
        context = plan_night(engine, tracker, ticker, as_of, latest, flow_run_id)
        champion: ChampionRef | None = context["champion"]
        plan = (
            decide_training(
                force=force,
                latest_complete=latest,
                has_champion=champion is not None,
                last_trained_week=context["last_trained_week"],
                last_trained_had_champion=context["last_trained_had_champion"],
                available_windows=training_windows_available(
                    weeks, as_of, window_weeks=window or _champion_window(champion) or 40
                ),
                needed_windows=holdout + MIN_TRAINING_WINDOWS,
            )
            if strategies
            else TrainingPlan(False, "no strategies to train")
        )
        due = forecast_week_due(latest, as_of)
        if due is not None and context["stored_forecast_days"] == DAYS:
            due = None  # a rerun: tonight's forecast is already stored
        result.update(
            trained=plan.train,
            train_reason=plan.reason,
            latest_complete_week=latest.isoformat() if latest else None,
        )
        fingerprint = data_fingerprint(closes)
        experiment_id, parent_run_id = start_mlflow_run(
            tracker,
            ticker,
            as_of,
            flow_run_id,
            {
                "source": night.source or "",
                "holdout_weeks": holdout,
                "seed": seed,
                "strategies": ",".join(strategies),
                "epochs": epochs if epochs is not None else "default",
                "force": force,
                "data_fingerprint": fingerprint,
                "train_reason": plan.reason[:500],
            },
        )
        result["mlflow"] = {
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id,
            "parent_run": tracker.run_link(experiment_id, parent_run_id),
        }
        mark = night.lap("plan_seconds", mark)

        # 4.-6. train in the child, score everyone on the same weeks, log, gate
        job = TrainingJob(
            ticker=ticker,
            as_of=as_of.isoformat(),
            holdout_weeks=holdout,
            strategies=list(strategies) if plan.train else [],
            seed=seed,
            tracking_uri=tracker.tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            fingerprint=fingerprint,
            epochs=epochs,
            window_weeks=window,
            champion_uri=champion.model_uri if champion else None,
            champion_version=champion.version if champion else None,
            champion_metadata=champion.metadata if champion else {},
            forecast_week=due.isoformat() if due else None,
            score=plan.train,
        )
        training: TrainingResult | None = None
        applied: AppliedDecision | None = None
        if plan.train or (due is not None and champion is not None):
            # Without training, the child only forecasts with the champion (TensorFlow).
            training = train_and_score(job, opaque(closes), settings)
            mark = night.lap("child_seconds", mark)
        if plan.train and training is not None:
            applied = promote_if_better(
                tracker,
                engine,
                ticker,
                as_of,
                opaque(training),
                champion,
                parent_run_id,
                settings.promotion_margin,
            )
            mark = night.lap("promote_seconds", mark)
            result.update(_training_summary(training, applied))
        champion_version = (
            applied.champion_version
            if applied is not None
            else champion.version
            if champion
            else None
        )
        result["champion_version"] = champion_version

        # 7. forecast next week when a week has just completed
        if due is not None:
            result["forecast"] = _forecast(
                engine, weeks, ticker, as_of, due, applied, champion, training
            )
        mark = night.lap("forecast_seconds", mark)
        # 8. score earlier forecasts whose dates now have actual closes
        result["realised"] = score_past_forecasts(engine, ticker, as_of, opaque(closes))
        mark = night.lap("score_seconds", mark)

        night.timings["train_seconds"] = round(training.train_seconds, 3) if training else 0.0
        if training is not None:
            night.timings.update({f"child_{k}": round(v, 3) for k, v in training.timings.items()})
        night.timings["total_seconds"] = round(time.perf_counter() - night.started, 3)
        result["timings"] = dict(night.timings)
        publish_report(opaque(result))
        record_night(engine, tracker, parent_run_id, opaque(result))
        result["timings"]["total_seconds"] = round(time.perf_counter() - night.started, 3)
        return result
    except BaseException as exc:
        _record_failure(engine, tracker, ticker, as_of, parent_run_id, begun, exc)
        raise


def _prewarm(settings: Settings) -> None:
    workroot = settings.resolved_home / "work"
    workroot.mkdir(parents=True, exist_ok=True)
    prewarm_worker(
        max_jobs=settings.training_worker_max_jobs,
        idle_seconds=settings.training_worker_idle_seconds,
        log_path=workroot / "training-worker.log",
    )


def _champion_window(champion: ChampionRef | None) -> int | None:
    if champion is None:
        return None
    try:
        return int(champion.metadata.get("window_weeks", ""))
    except ValueError:
        return None


def _training_summary(training: TrainingResult, applied: AppliedDecision) -> dict[str, Any]:
    decision = applied.decision
    return {
        "candidates": [
            {
                "name": m.name,
                "role": m.role,
                "rmse": m.rmse,
                "mape": m.mape,
                "train_seconds": round(m.train_seconds, 3),
                "mlflow_run_id": m.run_id,
                "version": applied.versions.get(m.name),
            }
            for m in training.models
        ],
        "held_out_weeks": training.held_out_weeks,
        "decision": {
            "action": decision.action,
            "candidate": decision.candidate,
            "reason": decision.reason,
        },
        "promoted": decision.candidate if decision.promote else None,
        "promoted_version": applied.promoted_version,
    }


def _forecast(
    engine: Engine,
    weeks: Any,
    ticker: str,
    as_of: dt.date,
    monday: dt.date,
    applied: AppliedDecision | None,
    champion: ChampionRef | None,
    training: TrainingResult | None,
) -> dict[str, Any]:
    name, version, is_baseline = pick_forecaster(applied=applied, champion=champion)
    model = training.model(name) if training is not None else None
    if model is not None and model.next_week is not None:
        values = model.next_week
    elif is_baseline:
        import pandas as pd

        from forecasting.baselines import Naive

        values = (
            Naive()
            .fit(weeks, train_until=pd.Timestamp(monday))
            .predict(weeks, [pd.Timestamp(monday)])[0]
        )
    else:
        raise RuntimeError(f"the training process returned no forecast from {name} for {ticker}")
    label = "naive" if is_baseline else model_name(ticker)
    closes = {monday + dt.timedelta(days=i): float(v) for i, v in enumerate(values)}
    inserted = store_forecast_rows(engine, ticker, as_of, closes, label, version, is_baseline)
    return {
        "week_start": monday.isoformat(),
        "model_name": label,
        "model_version": version,
        "is_baseline": is_baseline,
        "rows_inserted": inserted,
        "closes": [{"date": d.isoformat(), "close": c} for d, c in closes.items()],
    }


def _record_failure(
    engine: Engine,
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    parent_run_id: str | None,
    begun: bool,
    exc: BaseException,
) -> None:
    """Best effort: the night is marked failed and its MLflow run closed as FAILED."""
    from storage.db import session_scope
    from storage.runs import fail_run

    message = f"{type(exc).__name__}: {exc}"
    # The database or MLflow may be what failed: the original error is the one to raise.
    if begun:
        with contextlib.suppress(Exception), session_scope(engine) as session:
            fail_run(session, ticker=ticker, as_of=as_of, error=message)
    if parent_run_id is not None:
        with contextlib.suppress(Exception):
            tracker.end_run(parent_run_id, failed=True)


if __name__ == "__main__":
    print(nightly())
