"""The nightly Prefect flow as named steps: prepare (ingest, weeks), plan (whether to train, which
week is due), train and gate (child process, promotion), forecast, record. Each step calls the
thin tasks of `flows.night.tasks`; the decisions are the pure functions of `flows.night.policy`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from prefect import flow
from sqlalchemy import Engine

from flows.night import tasks
from flows.night.policy import (
    TrainingPlan,
    decide_training,
    forecast_week_due,
    may_train,
    pick_forecaster,
)
from flows.night.result import (
    ForecastDay,
    MlflowRefs,
    ModelScore,
    NightDecision,
    NightForecast,
    NightResult,
)
from flows.night.tasks import Closes, opaque
from flows.tracking.promotion import AppliedDecision
from flows.tracking.tracker import (
    ChampionRef,
    Tracker,
    browser_url,
    data_fingerprint,
    model_name,
)
from flows.training.protocol import TrainingJob, TrainingResult
from flows.training.worker import prewarm_worker
from forecasting.calendar import (
    last_complete_week,
    training_windows_available,
    yesterday_utc,
)
from forecasting.strategies import TRAINED_STRATEGIES, check_strategies
from forecasting.weeks import DAYS_PER_WEEK
from pricecast.errors import ConfigError, LockLost
from pricecast.faults import fault_point
from pricecast.settings import Settings, get_settings
from pricecast.urls import mask_secrets_in_logs

if TYPE_CHECKING:
    import pandas as pd

    from storage.locks import TickerLock

#: Windows the candidates need before the held-out span: `retrain` with no champion first
#: trains fresh up to 10 weeks before the span (forecasting.candidates), then fine-tunes.
MIN_TRAINING_WINDOWS = 12
DEFAULT_WINDOW_WEEKS = 40
T = TypeVar("T")


@dataclass(frozen=True)
class NightOptions:
    """What the caller asked for, resolved against the settings."""

    ticker: str
    as_of: dt.date
    source: str | None
    holdout_weeks: int
    strategies: tuple[str, ...]
    epochs: int | None
    window_weeks: int | None
    seed: int
    force: bool


@dataclass(frozen=True)
class Stores:
    engine: Engine
    tracker: Tracker
    #: The Prefect UI as a person's browser reaches it (PRICECAST_PREFECT_PUBLIC_URL), else
    #: Prefect's own UI URL; links from MLflow back to the flow run.
    prefect_ui: str | None = None


@dataclass
class Stopwatch:
    """The night's timings (`nightly --json` "timings"), lap by lap."""

    started: float = field(default_factory=time.perf_counter)
    mark: float = field(default_factory=time.perf_counter)
    laps: dict[str, float] = field(default_factory=dict)

    def lap(self, key: str) -> None:
        now = time.perf_counter()
        self.laps[key] = round(self.laps.get(key, 0.0) + now - self.mark, 3)
        self.mark = now

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)


@dataclass(frozen=True)
class NightData:
    """Tonight's prices: the closes up to as_of, their ISO weeks, the latest complete week."""

    closes: Closes
    weeks: pd.DataFrame
    latest_complete: dt.date | None
    ingest: dict[str, object] | None


@dataclass(frozen=True)
class NightPlan:
    training: TrainingPlan
    #: Monday of the week to forecast tonight (None: no week completed, or already stored).
    forecast_week: dt.date | None
    champion: ChampionRef | None
    fingerprint: str
    mlflow: MlflowRefs
    notes: tuple[str, ...] = ()


@dataclass
class _Progress:
    """How far the night got, so a failure can close what it opened."""

    row_opened: bool = False
    experiment_id: str | None = None
    parent_run_id: str | None = None


def night_run_name() -> str:
    """`BTC-USD 2017-11-05`: the ticker and the as-of date, so runs are told apart in the UI."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    as_of = parameters.get("as_of") or yesterday_utc()
    return f"{parameters.get('ticker') or 'BTC-USD'} {as_of}"


def night_tags(ticker: str, as_of: dt.date) -> list[str]:
    """The tags every night's flow run carries (filterable in the Prefect UI)."""
    return ["pricecast", f"ticker:{ticker}", f"as_of:{as_of.isoformat()}"]


@flow(name="nightly", flow_run_name=night_run_name, log_prints=True)
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
) -> NightResult:
    """One night for one ticker, as of `as_of` (default: yesterday, UTC).

    1. ingest `source` up to as_of (None: use what is stored); 2. rebuild ISO weeks as of as_of;
    3. decide whether to train; 4. train retrain + fresh in a child process; 5. score them, the
    champion and naive on the same held-out weeks; 6. MLflow + promotion gate; 7. forecast next
    week when a week has just completed; 8. score earlier forecasts. Returns the `NightResult`
    (`pricecast nightly --json` is its `to_dict()`).
    """
    mask_secrets_in_logs()  # Prefect's run logs (and their tracebacks) reach its API
    as_of = as_of or yesterday_utc()
    _tag_flow_run(night_tags(ticker, as_of))
    return run_night(
        ticker=ticker,
        as_of=as_of,
        source=source,
        holdout_weeks=holdout_weeks,
        strategies=list(strategies) if strategies is not None else list(TRAINED_STRATEGIES),
        epochs=epochs,
        seed=seed,
        force=force,
        window_weeks=window_weeks,
    )


def resolve_options(
    settings: Settings,
    *,
    ticker: str,
    as_of: dt.date,
    source: str | None,
    holdout_weeks: int | None,
    strategies: Sequence[str],
    epochs: int | None,
    window_weeks: int | None,
    seed: int,
    force: bool,
) -> NightOptions:
    """Validate the caller's options; settings the user did not set leave the model's defaults."""
    chosen = tuple(s.strip() for s in strategies if s.strip())
    if chosen:  # none: the night only forecasts and scores
        check_strategies(chosen, allowed=TRAINED_STRATEGIES)
    holdout = holdout_weeks if holdout_weeks is not None else settings.holdout_weeks
    if holdout < 1:
        raise ConfigError(f"holdout_weeks must be >= 1, got {holdout}")
    explicit = settings.model_fields_set
    if epochs is None and "epochs" in explicit:
        epochs = settings.epochs
    if epochs is not None and epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if window_weeks is None and "window_weeks" in explicit:
        window_weeks = settings.window_weeks
    return NightOptions(
        ticker=ticker,
        as_of=as_of,
        source=source,
        holdout_weeks=holdout,
        strategies=chosen,
        epochs=epochs,
        window_weeks=window_weeks,
        seed=seed,
        force=force,
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
) -> NightResult:
    """The body of `nightly` (inside a flow run, so the tasks are tracked): the steps under the
    ticker's lock."""
    from storage.db import ensure_schema, make_engine
    from storage.locks import ticker_lock

    settings = settings or get_settings()
    options = resolve_options(
        settings,
        ticker=ticker,
        as_of=as_of,
        source=source,
        holdout_weeks=holdout_weeks,
        strategies=strategies,
        epochs=epochs,
        window_weeks=window_weeks,
        seed=seed,
        force=force,
    )
    stores = Stores(
        engine=make_engine(settings.resolved_database_url),
        tracker=Tracker(
            settings.resolved_mlflow_uri,
            artifact_root=settings.mlflow_artifact_root,
            public_url=settings.mlflow_public_url,
        ),
        prefect_ui=_prefect_ui(settings),
    )
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    try:
        ensure_schema(stores.engine)
        with ticker_lock(
            stores.engine,
            name=f"nightly:{ticker}",
            timeout_seconds=settings.lock_timeout_seconds,
            lock_dir=settings.resolved_home / "locks",
        ) as lock:
            watch.lap("lock_wait_seconds")
            result = _locked_night(options, stores, settings, watch, lock)
            fault_point("release")  # done: losing the database now must not fail the night
            return result
    finally:
        stores.engine.dispose()


def _locked_night(
    options: NightOptions,
    stores: Stores,
    settings: Settings,
    watch: Stopwatch,
    lock: TickerLock,
) -> NightResult:
    progress = _Progress()
    try:
        fault_point("ingest")
        data = prepare(options, stores, settings, watch)
        fault_point("plan")
        _reconcile(options, stores, lock)
        progress.row_opened = True  # from here on the night has a row to mark failed
        plan = plan_night(options, data, stores, _current_flow_run_id(), watch)
        progress.experiment_id = plan.mlflow.experiment_id
        progress.parent_run_id = plan.mlflow.parent_run_id
        training, applied = train_and_gate(options, data, plan, stores, settings, watch, lock)
        fault_point("forecast")
        lock.check()
        forecast = forecast_next_week(options, data, plan, training, applied, stores)
        watch.lap("forecast_seconds")
        realised = tasks.score_past_forecasts(
            stores.engine, options.ticker, options.as_of, opaque(data.closes)
        )
        watch.lap("score_seconds")
        result = NightResult(
            ticker=options.ticker,
            as_of=options.as_of,
            source=options.source,
            flow_run_id=_current_flow_run_id(),
            trained=plan.training.train,
            train_reason=plan.training.reason,
            latest_complete_week=data.latest_complete,
            champion_version=_champion_after(applied, plan.champion),
            mlflow=plan.mlflow,
            realised=realised,
            timings=_timings(watch, training),
            ingest=data.ingest,
            forecast=forecast,
            candidates=_scores(training, applied),
            held_out_weeks=tuple(training.held_out_weeks) if training else (),
            decision=_decision(applied),
            promoted_version=applied.promoted_version if applied else None,
            notes=plan.notes,
        )
        fault_point("record")
        lock.check()
        return record(result, stores, watch, lock)
    except BaseException as exc:
        _record_failure(options, stores, progress, exc, lock)
        raise


def prepare(
    options: NightOptions, stores: Stores, settings: Settings, watch: Stopwatch
) -> NightData:
    """Steps 1-2: ingest the source up to as_of, then read the closes and their ISO weeks."""
    if may_train(
        has_strategies=bool(options.strategies), force=options.force, dates=[options.as_of]
    ):
        # A week completes tonight, so training is likely: let the worker import
        # TensorFlow while this process ingests and plans.
        prewarm_training(settings)
    ingest = None
    if options.source:
        ingest = tasks.ingest_prices(
            settings.resolved_database_url, options.ticker, options.source, options.as_of
        )
    watch.lap("ingest_seconds")
    closes, weeks = tasks.read_prices(stores.engine, options.ticker, options.as_of)
    watch.lap("read_seconds")
    return NightData(closes, weeks, last_complete_week(weeks, options.as_of), ingest)


def plan_night(
    options: NightOptions,
    data: NightData,
    stores: Stores,
    flow_run_id: str | None,
    watch: Stopwatch,
) -> NightPlan:
    """Step 3: open the night's row, decide whether to train and whether a forecast is due,
    and open the night's MLflow parent run."""
    as_of, ticker = options.as_of, options.ticker
    context = tasks.open_night(
        stores.engine, stores.tracker, ticker, as_of, data.latest_complete, flow_run_id
    )
    champion = context.champion
    window = options.window_weeks or _champion_window(champion) or DEFAULT_WINDOW_WEEKS
    training = (
        decide_training(
            force=options.force,
            latest_complete=data.latest_complete,
            has_champion=champion is not None,
            last_trained_week=context.last_trained_week,
            last_trained_had_champion=context.last_trained_had_champion,
            available_windows=training_windows_available(data.weeks, as_of, window_weeks=window),
            needed_windows=options.holdout_weeks + MIN_TRAINING_WINDOWS,
        )
        if options.strategies
        else TrainingPlan(False, "no strategies to train")
    )
    due = forecast_week_due(data.latest_complete, as_of)
    if due is not None and context.stored_forecast_days == DAYS_PER_WEEK:
        due = None  # a rerun: tonight's forecast is already stored
    fingerprint = data_fingerprint(data.closes)
    experiment_id, parent_run_id = tasks.start_mlflow_run(
        stores.tracker,
        ticker,
        as_of,
        flow_run_id,
        {
            "source": options.source or "",
            "holdout_weeks": options.holdout_weeks,
            "seed": options.seed,
            "strategies": ",".join(options.strategies),
            "epochs": options.epochs if options.epochs is not None else "default",
            "force": options.force,
            "data_fingerprint": fingerprint,
            "train_reason": training.reason[:500],
        },
        flow_run_url(stores.prefect_ui, flow_run_id),
    )
    tracker = stores.tracker
    refs = MlflowRefs(
        experiment_id,
        parent_run_id,
        tracker.run_link(experiment_id, parent_run_id),
        ui=tracker.ui_url,
        runs_table=tracker.experiment_link(experiment_id),
    )
    watch.lap("plan_seconds")
    return NightPlan(training, due, champion, fingerprint, refs, context.notes)


def train_and_gate(
    options: NightOptions,
    data: NightData,
    plan: NightPlan,
    stores: Stores,
    settings: Settings,
    watch: Stopwatch,
    lock: TickerLock,
) -> tuple[TrainingResult | None, AppliedDecision | None]:
    """Steps 4-6: train, score everyone on the same weeks and log in the child process; then
    the promotion gate. Without training the child only forecasts with the champion."""
    champion, train = plan.champion, plan.training.train
    if not train and (plan.forecast_week is None or champion is None):
        return None, None
    job = TrainingJob(
        ticker=options.ticker,
        as_of=options.as_of.isoformat(),
        holdout_weeks=options.holdout_weeks,
        strategies=list(options.strategies) if train else [],
        seed=options.seed,
        tracking_uri=stores.tracker.tracking_uri,
        experiment_id=plan.mlflow.experiment_id,
        parent_run_id=plan.mlflow.parent_run_id,
        fingerprint=plan.fingerprint,
        epochs=options.epochs,
        window_weeks=options.window_weeks,
        champion_uri=champion.model_uri if champion else None,
        champion_version=champion.version if champion else None,
        champion_metadata=champion.metadata if champion else {},
        forecast_week=plan.forecast_week.isoformat() if plan.forecast_week else None,
        score=train,
    )
    fault_point("training")
    lock.check()  # never two holders training one ticker
    training = tasks.train_and_score(job, opaque(data.closes), settings)
    watch.lap("child_seconds")
    if not train:
        return training, None
    fault_point("promotion")
    lock.check()
    applied = tasks.promote_if_better(
        stores.tracker,
        stores.engine,
        options.ticker,
        options.as_of,
        opaque(training),
        champion,
        plan.mlflow.parent_run_id,
        settings.promotion_margin,
        opaque(lock.fence),
        max_p_value=settings.promotion_max_pvalue,
    )
    watch.lap("promote_seconds")
    return training, applied


def forecast_next_week(
    options: NightOptions,
    data: NightData,
    plan: NightPlan,
    training: TrainingResult | None,
    applied: AppliedDecision | None,
    stores: Stores,
) -> NightForecast | None:
    """Step 7: when a week has just completed, store next week's forecast by the champion (the
    one the gate chose tonight), or by naive while there is no champion."""
    monday = plan.forecast_week
    if monday is None:
        return None
    name, version, is_baseline = pick_forecaster(applied=applied, champion=plan.champion)
    model = training.model(name) if training is not None else None
    if model is not None and model.next_week is not None:
        values = list(model.next_week)
    elif is_baseline:
        values = _naive_week(data.weeks, monday)
    else:
        raise RuntimeError(
            f"the training process returned no forecast from {name} for {options.ticker}"
        )
    label = "naive" if is_baseline else model_name(options.ticker)
    closes = {monday + dt.timedelta(days=i): float(v) for i, v in enumerate(values)}
    before = [close for day, close in data.closes if day < monday]
    bands = forecast_bands(closes, model.intervals if model is not None else None, before)
    inserted = tasks.store_forecast_rows(
        stores.engine, options.ticker, options.as_of, closes, label, version, is_baseline, bands
    )
    return NightForecast(
        week_start=monday,
        model_name=label,
        model_version=version,
        is_baseline=is_baseline,
        rows_inserted=inserted,
        days=tuple(ForecastDay(day, close, **bands.get(day, {})) for day, close in closes.items()),
    )


def forecast_bands(
    closes: dict[dt.date, float],
    intervals: dict[str, object] | None,
    closes_before: Sequence[float],
) -> dict[dt.date, dict[str, float]]:
    """Each forecast day's 80 % and 95 % bounds from the model's interval calibration (the
    split-conformal quantiles of tonight's held-out residuals, scaled by the trailing volatility
    of `closes_before`, the daily closes before the forecast week); {} without a calibration."""
    from forecasting.intervals import IntervalCalibration

    if not intervals or len(closes) != DAYS_PER_WEEK:
        return {}
    calibration = IntervalCalibration.from_dict(intervals)
    scale = calibration.scale_for(closes_before)
    days = sorted(closes)
    point = [closes[day] for day in days]
    bands: dict[dt.date, dict[str, float]] = {day: {} for day in days}
    for level, suffix in ((0.80, "80"), (0.95, "95")):
        lower, upper = calibration.bounds(point, level, scale)
        for day, low, high in zip(days, lower, upper, strict=True):
            bands[day][f"lower_{suffix}"] = float(low)
            bands[day][f"upper_{suffix}"] = float(high)
    return bands


def record(
    result: NightResult, stores: Stores, watch: Stopwatch, lock: TickerLock | None = None
) -> NightResult:
    """Step 8: the Prefect artifact, the MLflow summary, the night marked done (fenced by the
    ticker's lock when given)."""
    _log_outcome(result)
    tasks.publish_report(result)
    tasks.record_night(
        stores.engine, stores.tracker, opaque(result), opaque(lock.fence) if lock else None
    )
    return replace(result, timings={**result.timings, "total_seconds": watch.total()})


def _log_outcome(result: NightResult) -> None:
    """The decision in the flow run's log, where a Prefect user looks first."""
    from prefect import get_run_logger

    logger = get_run_logger()
    for note in result.notes:
        logger.warning("%s", note)
    if result.decision is not None:
        logger.info("decision: %s — %s", result.decision.action, result.decision.reason)
    else:
        logger.info("no training tonight: %s", result.train_reason)
    champion = result.champion_version
    logger.info(
        "champion: %s", f"{model_name(result.ticker)} v{champion}" if champion else "none (naive)"
    )
    if result.forecast is not None:
        logger.info(
            "forecast for the week of %s by %s stored (%d new rows)",
            result.forecast.week_start,
            result.forecast.made_by,
            result.forecast.rows_inserted,
        )


def _naive_week(weeks: pd.DataFrame, monday: dt.date) -> list[float]:
    import pandas as pd

    from forecasting.baselines import Naive

    target = pd.Timestamp(monday)
    return [float(v) for v in Naive().fit(weeks, train_until=target).predict(weeks, [target])[0]]


def _tag_flow_run(tags: list[str]) -> None:
    """Add `tags` to the current flow run (a served or CLI run alike). Best effort: a label is
    not worth failing a night for."""
    from prefect import get_client, get_run_logger
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return
    merged = sorted({*flow_run.tags, *tags})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), tags=merged)
    except Exception as exc:  # the API may be briefly away; the night itself is unaffected
        get_run_logger().warning("could not tag the flow run %s: %s", run_id, exc)


def _prefect_ui(settings: Settings) -> str | None:
    """The Prefect UI for links: PRICECAST_PREFECT_PUBLIC_URL, else Prefect's PREFECT_UI_URL
    (derived from PREFECT_API_URL); None with the ephemeral in-process API."""
    if settings.prefect_public_url:
        return browser_url(settings.prefect_public_url)
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if not PREFECT_API_URL.value():
        return None
    ui = PREFECT_UI_URL.value()
    return browser_url(str(ui)) if ui else None


def flow_run_url(prefect_ui: str | None, flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI."""
    if not prefect_ui or not flow_run_id:
        return None
    return f"{prefect_ui}/runs/flow-run/{flow_run_id}"


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def prewarm_training(settings: Settings) -> None:
    """Start the process's training worker now (if it has none) so that TensorFlow's import
    overlaps with the caller's own I/O instead of delaying the first training job."""
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


def _champion_after(applied: AppliedDecision | None, champion: ChampionRef | None) -> int | None:
    if applied is not None:
        return applied.champion_version
    return champion.version if champion else None


def _timings(watch: Stopwatch, training: TrainingResult | None) -> dict[str, float]:
    timings = dict(watch.laps)
    timings["train_seconds"] = round(training.train_seconds, 3) if training else 0.0
    if training is not None:
        timings.update({f"child_{k}": round(v, 3) for k, v in training.timings.items()})
    timings["total_seconds"] = watch.total()
    return timings


def _scores(
    training: TrainingResult | None, applied: AppliedDecision | None
) -> tuple[ModelScore, ...]:
    """Every model scored tonight (only a night that trained and went through the gate)."""
    if training is None or applied is None:
        return ()
    return tuple(
        ModelScore(
            name=m.name,
            role=m.role,
            mape=float(m.mape or 0.0),
            rmse=float(m.rmse or 0.0),
            train_seconds=round(m.train_seconds, 3),
            mlflow_run_id=m.run_id,
            version=applied.versions.get(m.name),
        )
        for m in training.models
    )


def _decision(applied: AppliedDecision | None) -> NightDecision | None:
    if applied is None:
        return None
    decision = applied.decision
    return NightDecision(decision.action, decision.candidate, decision.reason, decision.p_value)


def _reconcile(options: NightOptions, stores: Stores, lock: TickerLock) -> None:
    """Close what earlier nights of this ticker left open; best effort (a failure here is
    logged, and the next night tries again)."""
    from prefect import get_run_logger

    logger = get_run_logger()
    try:
        closed = tasks.reconcile(
            stores.engine, stores.tracker, options.ticker, options.as_of, opaque(lock.fence)
        )
    except LockLost:
        raise
    except Exception as exc:
        logger.warning("could not close what earlier nights left open: %s", _one_line(exc))
        return
    for what, items in closed.items():
        if items:
            logger.warning("closed %s left open by an earlier night: %s", what, items)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _record_failure(
    options: NightOptions,
    stores: Stores,
    progress: _Progress,
    exc: BaseException,
    lock: TickerLock | None = None,
) -> None:
    """Best effort: the night is marked failed and its MLflow runs closed as FAILED.

    The row is written only while no later holder took the lock (its token is unchanged):
    a lock lost to a database restart leaves the row ours to close, one taken by another run
    does not."""
    from storage.db import session_scope
    from storage.runs import fail_run

    message = _one_line(exc)
    # The database or MLflow may be what failed: the original error is the one to raise.
    if progress.row_opened:
        with contextlib.suppress(Exception), session_scope(stores.engine) as session:
            if lock is None or lock.token_unchanged(session):
                fail_run(session, ticker=options.ticker, as_of=options.as_of, error=message)
    if progress.parent_run_id is not None:
        with contextlib.suppress(Exception):
            if progress.experiment_id is not None:
                stores.tracker.close_running(
                    progress.experiment_id, parent_run_id=progress.parent_run_id
                )
        with contextlib.suppress(Exception):
            stores.tracker.end_run(progress.parent_run_id, failed=True)


if __name__ == "__main__":
    print(nightly().to_dict())
