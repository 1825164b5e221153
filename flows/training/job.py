"""The training child's job: train tonight's candidates, score them with the champion and naive on
the same held-out weeks, log a nested MLflow run for each, and forecast next week with every model.
Runs inside the training worker (`flows.training.worker`), where TensorFlow is already imported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flows.training.protocol import (
    JsonObject,
    ModelOutcome,
    ModelRole,
    TrainingJob,
    TrainingResult,
    read_closes,
    read_job,
)

T = TypeVar("T")

if TYPE_CHECKING:
    import pandas as pd

    from forecasting.backtest import BacktestResult, CandidateResult
    from forecasting.base import Forecaster
    from forecasting.candidates import LSTMForecaster
    from forecasting.intervals import IntervalCalibration


def run(workdir: Path) -> JsonObject:
    """The worker's entry point (`flows.training.job:run`): the job in `workdir`, as JSON."""
    return execute(read_job(workdir), workdir).to_payload()


def execute(job: TrainingJob, workdir: Path) -> TrainingResult:
    """The child's work on the closes in `workdir`: score (and log) every model, or, on a night
    without training, only forecast with the champion and naive."""
    from forecasting.strategies import TRAINED_STRATEGIES, check_strategies
    from forecasting.weeks import group_iso_weeks

    started = time.perf_counter()
    daily = read_closes(workdir)
    weeks = group_iso_weeks(daily, dt.date.fromisoformat(job.as_of))
    if not job.score:
        models = _forecast_only(job, weeks)
        timings = {"total_seconds": time.perf_counter() - started}
        return TrainingResult(held_out_weeks=[], train_until=None, models=models, timings=timings)

    check_strategies(job.strategies, allowed=TRAINED_STRATEGIES)
    timings = {}
    held_out, models = _score_and_log(job, weeks, timings, daily)
    timings["total_seconds"] = time.perf_counter() - started
    return TrainingResult(
        held_out_weeks=[w.date().isoformat() for w in held_out.held_out_weeks],
        train_until=held_out.train_until.date().isoformat(),
        models=models,
        timings=timings,
    )


def _score_and_log(
    job: TrainingJob, weeks: pd.DataFrame, timings: dict[str, float], daily: pd.DataFrame
) -> tuple[BacktestResult, list[ModelOutcome]]:
    """Tonight's candidates, the champion and naive scored on the same held-out weeks.

    Pipelined on two helper threads so that waiting overlaps with training: the champion loads
    from the registry while `fresh` trains (it does not need the champion), each scored model
    is logged to MLflow while the next one trains (naive, then fresh, then retrain + champion),
    and the night's comparison chart is drawn while the last one is logged.
    Scores do not depend on this order: every model is seeded and scored on the same weeks.
    """
    from forecasting.baselines import Naive

    independent = [s for s in job.strategies if s != "retrain"]
    dependent = [s for s in job.strategies if s == "retrain"]
    with ThreadPoolExecutor(1) as loader, ThreadPoolExecutor(1) as logger:
        scoring = _Scoring(job, weeks, logger, timings, daily)
        champion_load = loader.submit(_load_champion, job) if job.champion_uri else None
        # Naive first (instant), so its run is logged while the LSTMs train.
        scoring.score([Naive()], {"naive": "baseline"})
        if independent:
            candidates = [_candidate(job, s, None) for s in independent]
            scoring.score(candidates, dict.fromkeys(independent, "candidate"))
        with _timed(timings, "load_champion_wait_seconds"):
            champion = champion_load.result()[0] if champion_load is not None else None
        rest = [_candidate(job, s, champion) for s in dependent]
        roles: dict[str, ModelRole] = dict.fromkeys(dependent, "candidate")
        if champion is not None:
            rest.append(champion)
            roles["champion"] = "champion"
        if rest:
            scoring.score(rest, roles)
        # On the loader's thread (idle by now): the chart renders while the last model's run
        # is logged, not after it.
        chart = loader.submit(
            _timed_call, timings, "log_chart_seconds", _log_comparison, job, scoring.passes
        )
        with _timed(timings, "logging_wait_seconds"):
            models = scoring.outcomes(order=[*job.strategies, "champion", "naive"])
            chart.result()
    return scoring.held_out(), models


class _Scoring:
    """Backtest passes on the same held-out weeks; each scored model is logged on `logger`."""

    def __init__(
        self,
        job: TrainingJob,
        weeks: pd.DataFrame,
        logger: ThreadPoolExecutor,
        timings: dict[str, float],
        daily: pd.DataFrame,
    ) -> None:
        from forecasting import model as lstm

        self.job, self.weeks, self.logger, self.timings = job, weeks, logger, timings
        self.daily = daily
        config = lstm.LSTMConfig().with_overrides(epochs=job.epochs, window_weeks=job.window_weeks)
        windows = [config.window_weeks]
        if job.champion_uri and "window_weeks" in job.champion_metadata:
            windows.append(int(job.champion_metadata["window_weeks"]))
        # Every pass holds out the same weeks: the span fits the widest window of any model.
        self.window_weeks = max(windows)
        self.passes: list[BacktestResult] = []
        self.logged: dict[str, Future[ModelOutcome]] = {}

    def score(self, forecasters: list[Forecaster], roles: Mapping[str, ModelRole]) -> None:
        from forecasting.backtest import backtest

        with _timed(self.timings, "backtest_seconds"):
            result = backtest(
                self.weeks,
                as_of=dt.date.fromisoformat(self.job.as_of),
                candidates=forecasters,
                holdout_weeks=self.job.holdout_weeks,
                window_weeks=self.window_weeks,
            )
        self.passes.append(result)
        by_name = {f.name: f for f in forecasters}
        for scored in result.candidates:
            self.logged[scored.name] = self.logger.submit(
                _timed_call,
                self.timings,
                f"log_{scored.name}_seconds",
                _outcome,
                self.job,
                self.weeks,
                self.daily,
                result,
                scored,
                by_name[scored.name],
                roles[scored.name],
            )

    def held_out(self) -> BacktestResult:
        first = self.passes[0]
        if any(not p.held_out_weeks.equals(first.held_out_weeks) for p in self.passes):
            raise RuntimeError("the scoring passes used different held-out weeks")
        return first

    def outcomes(self, *, order: list[str]) -> list[ModelOutcome]:
        """Every logged model's outcome (waiting for its run), in `order`."""
        return [self.logged[name].result() for name in order if name in self.logged]


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's seconds to `timings[key]` (any thread; each key has one writer)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


def _timed_call(timings: dict[str, float], key: str, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, timed as `timings[key]` (for a helper thread's work)."""
    with _timed(timings, key):
        return function(*args)


def _log_comparison(job: TrainingJob, passes: list[BacktestResult]) -> None:
    """One chart of every model against the actuals, on the night's parent run."""
    from flows.tracking.candidate_run import log_comparison_chart

    log_comparison_chart(job.tracking_uri, job.parent_run_id, passes)


def _candidate(job: TrainingJob, strategy: str, champion: LSTMForecaster | None) -> Forecaster:
    """The forecasting package's own candidate for `strategy` (same defaults as `backtest`)."""
    from forecasting.candidates import build_candidates

    (candidate,) = build_candidates(
        [strategy],
        seed=job.seed,
        epochs=job.epochs,
        window_weeks=job.window_weeks,
        ticker=job.ticker,
        champion=champion,
    )
    return candidate


def _load_champion(job: TrainingJob) -> tuple[LSTMForecaster, IntervalCalibration | None]:
    """The champion's network (its metadata from the registry) and, for a servable version, the
    interval calibration it was logged with (None for a version logged as bare Keras)."""
    from flows.tracking.candidate_run import load_registered_model
    from forecasting.candidates import from_keras

    keras_model, calibration = load_registered_model(job.tracking_uri, job.champion_uri or "")
    return from_keras(keras_model, job.champion_metadata, name="champion"), calibration


def _calibration(
    backtest: BacktestResult, scored: CandidateResult, daily: pd.DataFrame
) -> IntervalCalibration | None:
    """Split-conformal bands from this model's held-out residuals tonight, each week's scores
    scaled by the trailing volatility of the closes before it (None if unusable)."""
    import pandas as pd

    from forecasting.intervals import calibrate_intervals, weekly_scales
    from forecasting.weeks import CLOSE, DATE

    try:
        scales = weekly_scales(
            daily[CLOSE].to_numpy(dtype="float64"),
            pd.to_datetime(daily[DATE]).to_numpy(dtype="datetime64[ns]"),
            [pd.Timestamp(w).to_datetime64() for w in backtest.held_out_weeks],
        )
        return calibrate_intervals(backtest.actuals, scored.predictions, scales=scales)
    except ValueError:  # a non-positive or non-finite prediction, too little history: no band
        return None


def _next_week(job: TrainingJob, weeks: pd.DataFrame, forecaster: Forecaster) -> list[float] | None:
    import pandas as pd

    if not job.forecast_week:
        return None
    closes: list[float] = forecaster.predict(weeks, [pd.Timestamp(job.forecast_week)])[0].tolist()
    return closes


def _outcome(
    job: TrainingJob,
    weeks: pd.DataFrame,
    daily: pd.DataFrame,
    backtest: BacktestResult,
    scored: CandidateResult,
    forecaster: Forecaster,
    role: ModelRole,
) -> ModelOutcome:
    """Log one scored model as a nested MLflow run (with its model if trained tonight) and
    forecast next week with it."""
    from flows.tracking.candidate_run import log_candidate_run, run_params, trained_model
    from forecasting.candidates import LSTMForecaster

    next_week = _next_week(job, weeks, forecaster)
    calibration = _calibration(backtest, scored, daily)
    model = (
        trained_model(
            forecaster, weeks, scored, backtest, recent_closes=daily, calibration=calibration
        )
        if isinstance(forecaster, LSTMForecaster) and role == "candidate"
        else None
    )
    params = run_params(
        scored.description,
        role=role,
        as_of=job.as_of,
        fingerprint=job.fingerprint,
        backtest=backtest,
        holdout_weeks=job.holdout_weeks,
        champion_version=job.champion_version,
    )
    logged = log_candidate_run(
        tracking_uri=job.tracking_uri,
        experiment_id=job.experiment_id,
        parent_run_id=job.parent_run_id,
        role=role,
        scored=scored,
        backtest=backtest,
        params=params,
        model=model,
        tags={"as_of": job.as_of, "ticker": job.ticker},
        calibration=calibration,
    )
    return ModelOutcome(
        name=scored.name,
        role=role,
        rmse=float(scored.rmse),
        mape=float(scored.mape),
        weekly_rmse=[float(x) for x in scored.weekly_rmse],
        weekly_mape=[float(x) for x in scored.weekly_mape],
        train_seconds=float(scored.train_seconds),
        predict_seconds=float(scored.predict_seconds),
        params={k: str(v) for k, v in params.items()},
        metadata=dict(model.metadata) if model is not None else {},
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        model_id=logged.model_id,
        next_week=next_week,
        intervals=calibration.to_dict() if calibration is not None else None,
    )


def _forecast_only(job: TrainingJob, weeks: pd.DataFrame) -> list[ModelOutcome]:
    """No training tonight: next week's closes from the champion (and naive)."""
    import pandas as pd

    from forecasting.baselines import Naive

    champion, calibration = _load_champion(job) if job.champion_uri else (None, None)
    naive = Naive().fit(weeks, train_until=pd.Timestamp(job.as_of))  # naive ignores the cutoff
    forecasters: list[tuple[Forecaster | None, ModelRole, IntervalCalibration | None]] = [
        (champion, "champion", calibration),
        (naive, "baseline", None),
    ]
    return [
        ModelOutcome(
            name=forecaster.name,
            role=role,
            rmse=None,
            mape=None,
            weekly_rmse=[],
            weekly_mape=[],
            train_seconds=0.0,
            predict_seconds=0.0,
            params={},
            metadata={},
            run_id=None,
            model_uri=None,
            model_id=None,
            next_week=_next_week(job, weeks, forecaster),
            intervals=bands.to_dict() if bands is not None else None,
        )
        for forecaster, role, bands in forecasters
        if forecaster is not None
    ]
