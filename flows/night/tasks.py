"""The night's Prefect tasks: thin wrappers over `storage/`, the tracker and the training worker.
Retries only where I/O can fail transiently (a database or MLflow outage), never on bad data.

Large values (the closes, the training result) travel wrapped in `opaque`, so Prefect does not
walk them element by element looking for futures (seconds per night otherwise).
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from flows.night.policy import Score, decide_promotion
from flows.night.report import markdown
from flows.night.result import NightResult, RealisedAccuracy
from flows.tracking.promotion import AppliedDecision, TrainedCandidate, apply_decision
from flows.tracking.tracker import ChampionRef, Tracker
from flows.training.protocol import TrainingJob, TrainingResult
from flows.training.worker import run_in_child
from forecasting.weeks import CLOSE, DATE
from pricecast.errors import ServiceUnavailable
from pricecast.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from storage.runs import Forecast

IO_RETRIES = 2
IO_RETRY_DELAYS = [1.0, 4.0]
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
Closes = Sequence[tuple[dt.date, float]]


def opaque(value: T) -> T:
    """`value` wrapped in Prefect's `quote`; the task receives the value itself."""
    return cast(T, quote(value))


def _transient(_task: object, _task_run: object, state: Any) -> bool:
    """Retry database and MLflow outages; never bad data or a bad setting."""
    return isinstance(state.data, ServiceUnavailable | OperationalError | InterfaceError)


def io_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task that retries (with backoff) only when a database or MLflow call failed."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return task(
            name=name,
            retries=IO_RETRIES,
            retry_delay_seconds=IO_RETRY_DELAYS,
            retry_condition_fn=_transient,
            cache_policy=NO_CACHE,
        )(fn)

    return decorate


@io_task("ingest")
def ingest_prices(database_url: str, ticker: str, source: str, as_of: dt.date) -> dict[str, Any]:
    from flows.ingest.load import ingest

    return ingest(database_url=database_url, ticker=ticker, source=source, as_of=as_of).to_dict()


@io_task("read prices")
def read_prices(engine: Engine, ticker: str, as_of: dt.date) -> tuple[Closes, pd.DataFrame]:
    """The stored closes up to as_of, and their ISO weeks."""
    import pandas as pd

    from forecasting.weeks import group_iso_weeks
    from storage.db import session_scope
    from storage.prices import read_closes

    with session_scope(engine) as session:
        closes = read_closes(session, ticker=ticker, as_of=as_of)
    daily = pd.DataFrame(closes, columns=[DATE, CLOSE])
    return closes, group_iso_weeks(daily, as_of)


@dataclass(frozen=True)
class NightContext:
    """What earlier nights and the registry say, gathered when the night's row is opened."""

    last_trained_week: dt.date | None
    last_trained_had_champion: bool
    stored_forecast_days: int
    champion: ChampionRef | None
    #: What the night noticed and recorded before planning (an alias moved outside pricecast).
    notes: tuple[str, ...] = ()


@io_task("plan night")
def open_night(
    engine: Engine,
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    latest_complete: dt.date | None,
    flow_run_id: str | None,
) -> NightContext:
    """Open the night's row; gather what the decisions need: earlier nights, the champion,
    whether tonight's forecast is already stored. A champion alias moved outside pricecast is
    recorded in `promotions` as an external move (and noted)."""
    from flows.tracking.promotion import record_external_move
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
    champion = tracker.champion(ticker)  # after the row is open: an MLflow outage fails it
    with session_scope(engine) as session:
        external = record_external_move(session, ticker=ticker, as_of=as_of, champion=champion)
    return NightContext(
        last_trained_week=last.last_complete_week if last else None,
        last_trained_had_champion=bool(last and last.champion_version is not None),
        stored_forecast_days=stored_forecast,
        champion=champion,
        notes=(external,) if external else (),
    )


@io_task("start MLflow run")
def start_mlflow_run(
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    flow_run_id: str | None,
    params: Mapping[str, object],
    flow_run_url: str | None = None,
) -> tuple[str, str]:
    experiment_id = tracker.ensure_experiment(ticker)
    run_id = tracker.start_parent_run(
        experiment_id=experiment_id,
        ticker=ticker,
        as_of=as_of,
        flow_run_id=flow_run_id,
        params=params,
        flow_run_url=flow_run_url,
    )
    return experiment_id, run_id


@task(name="train and score (child process)", cache_policy=NO_CACHE)
def train_and_score(job: TrainingJob, closes: Closes, settings: Settings) -> TrainingResult:
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


def promotion_scores(result: TrainingResult) -> tuple[list[Score], Score | None, Score]:
    """(candidates, champion, naive) scores from the training result."""

    def score(name: str) -> Score | None:
        model = result.model(name)
        if model is None or model.mape is None or model.rmse is None:
            return None
        return Score(name, model.mape, model.rmse, tuple(model.weekly_mape))

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
    fence: Callable[[Session], None] | None = None,
    max_p_value: float | None = None,
) -> AppliedDecision:
    """Decide (pure) and apply: versions, audit row, alias. No retries: a half-applied attempt
    is rolled back, and rerunning the night redoes it. `max_p_value` (None: report only) is the
    Diebold-Mariano p-value a promoted candidate must reach."""
    candidates, champion_score, naive = promotion_scores(result)
    decision = decide_promotion(
        candidates,
        champion=champion_score,
        naive=naive,
        margin=margin,
        champion_version=champion.version if champion else None,
        max_p_value=max_p_value,
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
        fence=fence,
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
    bands: Mapping[dt.date, Mapping[str, float]] | None = None,
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
            bands=bands,
        )


#: A forecast day with its actual: (actual, predicted, {level: (lower, upper) or None}).
ScoredDay = tuple[float, float, Mapping[float, tuple[float, float] | None]]


def realised_coverage(days: Sequence[ScoredDay], level: float) -> tuple[float | None, int]:
    """(fraction of days whose actual fell inside the `level` band, days that had a band)."""
    from forecasting.intervals import coverage

    banded = [(a, band) for a, _, bands in days if (band := bands.get(level)) is not None]
    if not banded:
        return None, 0
    actual = [a for a, _ in banded]
    lower = [band[0] for _, band in banded]
    upper = [band[1] for _, band in banded]
    return coverage(actual, lower, upper), len(banded)


def realised_accuracy(
    pairs: Sequence[tuple[float, float]] | Sequence[ScoredDay], weeks_scored: int
) -> RealisedAccuracy:
    """RMSE ($) and MAPE (%) over every forecast day with a known actual: (actual, predicted),
    and, for days stored with bands ((actual, predicted, {level: (lower, upper)})), the realised
    coverage of the 80 % and 95 % intervals."""
    if not pairs:
        return RealisedAccuracy(days=0, rmse=None, mape=None, weeks_scored_tonight=weeks_scored)
    import numpy as np

    from forecasting.metrics import mape, rmse

    actual = np.array([p[0] for p in pairs], dtype="float64")
    predicted = np.array([p[1] for p in pairs], dtype="float64")
    days: list[ScoredDay] = [p for p in pairs if len(p) == 3]  # type: ignore[misc]
    coverage_80, banded = realised_coverage(days, 0.80)
    coverage_95, _ = realised_coverage(days, 0.95)
    return RealisedAccuracy(
        days=len(pairs),
        rmse=rmse(actual, predicted),
        mape=mape(actual, predicted),
        weeks_scored_tonight=weeks_scored,
        coverage_80=coverage_80,
        coverage_95=coverage_95,
        interval_days=banded,
    )


def scored_day(row: Forecast) -> ScoredDay:
    """A stored, scored forecast row as `realised_accuracy` reads it."""
    return (
        row.actual_close or 0.0,
        row.predicted_close,
        {0.80: row.band(0.80), 0.95: row.band(0.95)},
    )


@io_task("score past forecasts")
def score_past_forecasts(
    engine: Engine, ticker: str, as_of: dt.date, closes: Closes
) -> RealisedAccuracy:
    """Record the actual closes of forecast days, score each week whose forecast is now complete,
    and return the accuracy of every scored forecast so far."""
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
            week = realised_accuracy([scored_day(r) for r in rows], 0)
            add_forecast_score(
                session,
                ticker=ticker,
                as_of=night,
                forecasts=rows,
                rmse=float(week.rmse or 0.0),
                mape=float(week.mape or 0.0),
            )
            weeks_scored += 1
        days = [scored_day(r) for r in scored_forecasts(session, ticker=ticker, as_of=as_of)]
    return realised_accuracy(days, weeks_scored)


@io_task("record night")
def record_night(
    engine: Engine,
    tracker: Tracker,
    result: NightResult,
    fence: Callable[[Session], None] | None = None,
) -> None:
    """The night's summary on its MLflow parent run, then the night marked done (only while
    `fence(session)` passes in that transaction: the ticker's lock is still ours)."""
    from storage.db import session_scope
    from storage.runs import finish_run

    metrics: dict[str, float] = {}
    for c in result.candidates:
        metrics[f"{c.name}_mape"] = c.mape
        metrics[f"{c.name}_rmse"] = c.rmse
    realised = result.realised
    if realised.days and realised.mape is not None and realised.rmse is not None:
        metrics["realised_mape"] = realised.mape
        metrics["realised_rmse"] = realised.rmse
    for key in ("total_seconds", "train_seconds"):
        if key in result.timings:
            metrics[key] = result.timings[key]
    decision = result.decision
    parent_run_id = result.mlflow.parent_run_id
    tracker.log_summary(
        parent_run_id,
        metrics=metrics,
        tags={
            "trained": result.trained,
            "decision": decision.action if decision else "none",
            "decision_reason": (decision.reason if decision else result.train_reason)[:4000],
            "decision_p_value": ""
            if decision is None or decision.p_value is None
            else f"{decision.p_value:.6f}",
            "champion_version": result.champion_version,
        },
    )
    tracker.end_run(parent_run_id)
    with session_scope(engine) as session:
        if fence is not None:
            fence(session)
        finish_run(
            session,
            ticker=result.ticker,
            as_of=result.as_of,
            champion_version=result.champion_version,
            timings=dict(result.timings),
            mlflow_run_id=parent_run_id,
        )


@io_task("reconcile earlier nights")
def reconcile(
    engine: Engine, tracker: Tracker, ticker: str, as_of: dt.date, fence: Callable[[Session], None]
) -> dict[str, list[Any]]:
    """Close what an earlier night of `ticker` left open when it crashed or lost the lock (run
    under the ticker's lock, so its holder is gone): rows still `running` become failed, its
    MLflow runs still RUNNING become FAILED, versions still `decision=pending` become failed."""
    from storage.db import session_scope
    from storage.runs import close_orphaned_runs

    with session_scope(engine) as session:
        fence(session)
        rows = close_orphaned_runs(session, ticker=ticker, closed_by=as_of)
    runs = tracker.close_running(tracker.ensure_experiment(ticker))
    versions = tracker.settle_pending(ticker)
    return {"nightly_runs": rows, "mlflow_runs": runs, "versions": versions}


def artifact_key(ticker: str) -> str:
    """The Prefect artifact key of a ticker's nightly report (its history in the UI)."""
    return "nightly-" + re.sub(r"[^a-z0-9-]+", "-", ticker.lower()).strip("-")


def publish_report(result: NightResult) -> None:
    """The night's markdown artifact, on the flow run itself (called from the flow, not a task,
    so the Prefect UI shows it on the run's Artifacts tab), keyed per ticker for its history.

    A Prefect API that stopped answering costs the report, never the night: its models, promotion
    and forecast are stored by now, so it is still recorded done (with a warning)."""
    import httpx
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(
            markdown=markdown(result),
            key=artifact_key(result.ticker),
            description=f"nightly {result.ticker} as of {result.as_of}",
        )
    except (httpx.HTTPError, ConnectionError) as exc:
        print(
            f"warning: the night's report was not published to Prefect ({type(exc).__name__}: "
            f"{exc}); the night itself is stored (pricecast forecast, the MLflow runs)"
        )
