"""Train, score and log tonight's candidates in a child process (`python -m flows.training`).

TensorFlow keeps memory after every fit(), so a long-running flow server never imports it: the
parent writes a job (JSON + the closes as a pickle), the child trains `retrain` and `fresh`,
re-scores the champion and naive on the same held-out weeks, logs nested MLflow runs (models
included) and writes a JSON result. The child's memory goes back to the OS when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import gc
import json
import os
import select
import subprocess
import sys
import threading
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


class TrainingWorker:
    """A child Python process that has TensorFlow and MLflow imported and runs jobs one by one.

    Reusing it across nights (a backfill) saves the imports (seconds per night); it exits after
    `max_jobs` jobs or `idle_seconds` without work, so its memory is returned to the OS and TF's
    per-fit leaks stay bounded. The flow process itself never imports TensorFlow.
    """

    def __init__(self, *, max_jobs: int, idle_seconds: float, log_path: Path) -> None:
        self.max_jobs = max(1, max_jobs)
        self.idle_seconds = idle_seconds
        self.log_path = log_path
        self.jobs = 0
        self.ready_info: dict[str, Any] | None = None
        self.last_used = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.training",
                    "--serve",
                    str(self.max_jobs),
                    # The child waits a little longer than the parent trusts it to.
                    str(idle_seconds + 60),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
                bufsize=1,
            )

    @property
    def usable(self) -> bool:
        fresh = time.monotonic() - self.last_used < self.idle_seconds
        return self.process.poll() is None and self.jobs < self.max_jobs and fresh

    def _message(self, timeout: float | None, doing: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.close(kill=True)
            raise errors.PricecastError(
                f"the training process did not finish {doing} within {timeout:g} s and was "
                f"stopped; see {self.log_path}"
            )
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(timeout=30)
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"the training process exited (code {code}) while {doing}; {self.log_path}:\n{tail}"
            )
        return dict(json.loads(line))

    def run(self, workdir: Path, *, timeout_seconds: float | None = None) -> dict[str, Any]:
        """Run the job in `workdir` (job.json + closes.pkl); returns the child's 'done' message."""
        if self.ready_info is None:
            self.ready_info = self._message(STARTUP_TIMEOUT_SECONDS, "starting")
            self.ready_info["started_for_this_job"] = True
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"workdir": str(workdir)}) + "\n")
        self.process.stdin.flush()
        done = self._message(timeout_seconds, "training")
        self.jobs += 1
        self.last_used = time.monotonic()
        return done

    def close(self, *, kill: bool = False) -> None:
        if self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


STARTUP_TIMEOUT_SECONDS = 300.0
_worker: TrainingWorker | None = None
_worker_lock = threading.Lock()
_job_lock = threading.Lock()


def _take_worker(*, max_jobs: int, idle_seconds: float, log_path: Path) -> TrainingWorker:
    """The process's training worker, started if there is none (or it expired)."""
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.usable:
            if _worker is not None:
                _worker.close()
            _worker = TrainingWorker(
                max_jobs=max_jobs, idle_seconds=idle_seconds, log_path=log_path
            )
            atexit.register(_worker.close)
        return _worker


def prewarm_worker(*, max_jobs: int, idle_seconds: float, log_path: Path) -> None:
    """Start the worker's imports now, so they overlap with the flow's own I/O."""
    _take_worker(max_jobs=max_jobs, idle_seconds=idle_seconds, log_path=log_path)


def shutdown_worker() -> None:
    global _worker
    with _worker_lock:
        if _worker is not None:
            _worker.close()
            _worker = None


def run_in_child(
    job: TrainingJob,
    closes: Sequence[tuple[dt.date, float]],
    *,
    workdir: Path,
    max_jobs: int = 1,
    idle_seconds: float = 300.0,
    log_path: Path | None = None,
    timeout_seconds: float | None = None,
) -> TrainingResult:
    """Run `job` in the training worker (a fresh one when `max_jobs` is 1) and return its result.

    Errors the child raises as pricecast errors come back as the same kind with the same
    message; a crash raises RuntimeError with the tail of the child's log.
    """
    import pandas as pd

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / JOB_FILE).write_text(json.dumps(asdict(job), indent=2))
    pd.DataFrame(closes, columns=["date", "close"]).to_pickle(workdir / CLOSES_FILE)
    log = log_path or workdir.parent / "training-worker.log"
    started = time.perf_counter()
    with _job_lock:  # one job at a time per worker, even if flows run in threads
        worker = _take_worker(max_jobs=max_jobs, idle_seconds=idle_seconds, log_path=log)
        try:
            done = worker.run(workdir, timeout_seconds=timeout_seconds)
        except BaseException:
            shutdown_worker()  # never reuse a worker in an unknown state
            raise
    elapsed = time.perf_counter() - started
    result_file = workdir / RESULT_FILE
    payload = json.loads(result_file.read_text()) if result_file.is_file() else None
    if payload is None or "error" in payload:
        raise _child_error(payload, int(done.get("code", 1)), log)
    timings = dict(payload["timings"])
    timings["worker_rss_mb"] = float(done.get("rss_mb", 0.0))
    timings["job_seconds"] = float(done.get("job_seconds", 0.0))
    timings["worker_jobs"] = float(worker.jobs)
    ready = worker.ready_info or {}
    if ready.pop("started_for_this_job", False):
        timings["import_seconds"] = float(ready.get("import_seconds", 0.0))
    else:
        timings["import_seconds"] = 0.0
    return TrainingResult(
        held_out_weeks=payload["held_out_weeks"],
        train_until=payload["train_until"],
        models=[ModelOutcome(**m) for m in payload["models"]],
        timings=timings,
        child_seconds=elapsed,
    )


def _child_error(payload: Mapping[str, Any] | None, code: int, log: Path) -> Exception:
    if payload and "error" in payload:
        kind = getattr(errors, payload["error"].get("type", ""), None)
        message = payload["error"].get("message", "")
        if isinstance(kind, type) and issubclass(kind, errors.PricecastError):
            return kind(message)
        return RuntimeError(f"training failed: {message} (log: {log})")
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    return RuntimeError(f"training ended with code {code} and no result; log {log}:\n{tail}")


# --- child side ---------------------------------------------------------------------------------


def _config(job: TrainingJob) -> Any:
    from forecasting import model as lstm

    return lstm.LSTMConfig().with_overrides(epochs=job.epochs, window_weeks=job.window_weeks)


def _candidate(job: TrainingJob, strategy: str, champion: Any) -> Any:
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
        import matplotlib.dates
        import matplotlib.pyplot as plt
        import pandas as pd

        days = [w + pd.Timedelta(days=d) for w in held_out for d in range(7)]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(days, actuals.ravel(), label="actual", color="black", linewidth=1.2)
        ax.plot(days, predictions.ravel(), label=name, color="tab:blue", linewidth=1.0)
        ax.set_title(f"{name}: forecast vs actual on the held-out weeks")
        ax.set_ylabel("close (USD)")
        ax.legend()
        # Few fixed ticks: automatic date locators and tight_layout cost more than the plot.
        ax.set_xticks(days[:: max(len(days) // 6, 1)])
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
        fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.12)
        fig.savefig(path, dpi=72)
        plt.close(fig)

    return plot


def _flat_params(description: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
        for k, v in description.items()
    }


def _load_champion(job: TrainingJob) -> Any:
    from flows.tracking import tracker as tracking
    from forecasting.candidates import from_keras

    keras_model = tracking.load_keras_model(job.tracking_uri, job.champion_uri or "")
    return from_keras(keras_model, job.champion_metadata, name="champion")


def _outcome(
    job: TrainingJob, weeks: Any, result: Any, outcome: Any, forecaster: Any, role: str
) -> dict[str, Any]:
    """Log one scored model as a nested MLflow run (with its model if trained tonight) and
    forecast next week with it; returns the ModelOutcome as a dict."""
    import numpy as np
    import pandas as pd

    from flows.tracking import tracker as tracking
    from forecasting.candidates import LSTMForecaster
    from forecasting.windows import make_windows

    next_week = None
    if job.forecast_week:
        next_week = forecaster.predict(weeks, [pd.Timestamp(job.forecast_week)])[0].tolist()
    trained = isinstance(forecaster, LSTMForecaster) and role == "candidate"
    metadata = forecaster.metadata.to_dict() if trained and forecaster.metadata else {}
    held_out = result.held_out_weeks
    params = {
        **_flat_params(outcome.description),
        "as_of": job.as_of,
        "data_fingerprint": job.fingerprint,
        "held_out_first_week": held_out[0].date().isoformat(),
        "held_out_last_week": held_out[-1].date().isoformat(),
        "holdout_weeks": job.holdout_weeks,
    }
    if role == "champion":
        params["champion_version"] = job.champion_version
    input_example = output_example = None
    if trained:
        config = forecaster.metadata.config
        window = make_windows(
            weeks,
            held_out[:1],
            window_weeks=config.window_weeks,
            normalisation=config.normalisation,
        )
        input_example = window.inputs.astype("float32")
        # The model's output for that window, relative to the last close (as it predicts).
        output_example = (outcome.predictions[:1] / window.base_closes[:, None] - 1.0).astype(
            "float32"
        )
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
        predictions_csv=_predictions_csv(held_out, result.actuals, outcome.predictions),
        # Plots for tonight's candidates; the champion and naive get the CSV (plots cost).
        plot=_plotter(outcome.name, held_out, result.actuals, outcome.predictions)
        if role == "candidate"
        else None,
        keras_model=forecaster.model if trained else None,
        input_example=input_example,
        output_example=output_example,
        model_metadata=metadata,
        tags={"as_of": job.as_of, "ticker": job.ticker},
    )
    return asdict(
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


def _forecast_only(job: TrainingJob, weeks: Any) -> list[dict[str, Any]]:
    """No training tonight: next week's closes from the champion (and naive)."""
    import pandas as pd

    from forecasting.baselines import Naive

    models = []
    champion = _load_champion(job) if job.champion_uri else None
    for forecaster, role in (
        (champion, "champion"),
        (Naive().fit(weeks, train_until=None), "baseline"),
    ):
        if forecaster is None:
            continue
        next_week = None
        if job.forecast_week:
            next_week = forecaster.predict(weeks, [pd.Timestamp(job.forecast_week)])[0].tolist()
        empty = ModelOutcome(
            forecaster.name, role, None, None, [], [], 0.0, 0.0, {}, {}, None, None, None, next_week
        )
        models.append(asdict(empty))
    return models


def execute(job: TrainingJob, workdir: Path) -> dict[str, Any]:
    """The child's work; returns the JSON-able result (see TrainingResult).

    Pipelined on two helper threads so that waiting overlaps with training: the champion loads
    from the registry while `fresh` trains (it does not need the champion), and each scored model
    is logged to MLflow while the next one trains (naive, then fresh, then retrain + champion).
    Scores do not depend on this order: every model is seeded and scored on the same weeks.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from forecasting.backtest import backtest
    from forecasting.baselines import Naive
    from forecasting.weeks import group_iso_weeks

    started = time.perf_counter()
    as_of = dt.date.fromisoformat(job.as_of)
    weeks = group_iso_weeks(pd.read_pickle(workdir / CLOSES_FILE), as_of)
    timings: dict[str, float] = {}
    if not job.score:
        models = _forecast_only(job, weeks)
        timings["total_seconds"] = time.perf_counter() - started
        return {"held_out_weeks": [], "train_until": None, "models": models, "timings": timings}

    unknown = [s for s in job.strategies if s not in STRATEGIES]
    if unknown:
        raise errors.ConfigError(
            f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}"
        )
    windows = [_config(job).window_weeks]
    if job.champion_uri and "window_weeks" in job.champion_metadata:
        windows.append(int(job.champion_metadata["window_weeks"]))
    span = {"as_of": as_of, "holdout_weeks": job.holdout_weeks, "window_weeks": max(windows)}
    independent = [s for s in job.strategies if s != "retrain"]
    dependent = [s for s in job.strategies if s == "retrain"]
    logged: dict[str, Any] = {}
    with ThreadPoolExecutor(1) as loader, ThreadPoolExecutor(1) as logger:
        champion_load = loader.submit(_load_champion, job) if job.champion_uri else None

        def score(forecasters: list[Any], roles: dict[str, str]) -> Any:
            mark = time.perf_counter()
            result = backtest(weeks, candidates=forecasters, **span)
            timings["backtest_seconds"] = timings.get("backtest_seconds", 0.0) + (
                time.perf_counter() - mark
            )
            by_name = {f.name: f for f in forecasters}
            for outcome in result.candidates:
                logged[outcome.name] = logger.submit(
                    _outcome,
                    job,
                    weeks,
                    result,
                    outcome,
                    by_name[outcome.name],
                    roles[outcome.name],
                )
            return result

        # Naive first (instant), so its run is logged while the LSTMs train.
        passes = [score([Naive()], {"naive": "baseline"})]
        if independent:
            passes.append(
                score(
                    [_candidate(job, s, None) for s in independent],
                    dict.fromkeys(independent, "candidate"),
                )
            )
        mark = time.perf_counter()
        champion = champion_load.result() if champion_load is not None else None
        timings["load_champion_wait_seconds"] = time.perf_counter() - mark
        rest = [_candidate(job, s, champion) for s in dependent]
        roles = dict.fromkeys(dependent, "candidate")
        if champion is not None:
            rest.append(champion)
            roles["champion"] = "champion"
        if rest:
            passes.append(score(rest, roles))
        held_out = passes[0]
        if any(not p.held_out_weeks.equals(held_out.held_out_weeks) for p in passes):
            raise RuntimeError("the scoring passes used different held-out weeks")
        mark = time.perf_counter()
        order = [*job.strategies, "champion", "naive"]
        models = [logged[name].result() for name in order if name in logged]
        timings["logging_wait_seconds"] = time.perf_counter() - mark
    timings["total_seconds"] = time.perf_counter() - started
    return {
        "held_out_weeks": [w.date().isoformat() for w in held_out.held_out_weeks],
        "train_until": held_out.train_until.date().isoformat(),
        "models": models,
        "timings": timings,
    }


def _run_job(workdir: Path) -> int:
    """Run one job; the result (or the error) is written to workdir/result.json."""
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


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _warm_imports() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import mlflow.keras  # noqa: F401

    import forecasting.backtest  # noqa: F401
    import forecasting.candidates  # noqa: F401


def serve(max_jobs: int, idle_seconds: float) -> int:
    """The worker loop: one JSON line per job on stdin, one 'done' line per job on stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, never into the protocol
    started = time.perf_counter()
    _warm_imports()
    ready = {"ready": True, "pid": os.getpid(), "import_seconds": time.perf_counter() - started}
    protocol.write(json.dumps(ready) + "\n")
    for _ in range(max_jobs):
        readable, _, _ = select.select([sys.stdin], [], [], idle_seconds)
        line = sys.stdin.readline() if readable else ""
        if not line:
            break  # idle for too long, or the parent closed the pipe
        started = time.perf_counter()
        code = _run_job(Path(json.loads(line)["workdir"]))
        done = {
            "done": True,
            "code": code,
            "rss_mb": _rss_mb(),
            "job_seconds": time.perf_counter() - started,
        }
        protocol.write(json.dumps(done) + "\n")
        # Clean up after answering: this overlaps with the flow's next steps.
        import keras

        keras.backend.clear_session()
        gc.collect()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--serve":
        return serve(int(args[1]), float(args[2]))
    return _run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
