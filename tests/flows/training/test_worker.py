"""The training worker's process and protocol, with tiny pure-Python jobs (no TensorFlow): jobs
and results round-trip, errors come back as the same kind, a dead child is one clear line."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.training import worker
from flows.training.protocol import TrainingJob, TrainingResult, write_job
from flows.training.worker import TrainingWorker, new_job_log, run_in_child, shutdown_worker
from pricecast.errors import (
    DataError,
    ServiceUnavailable,
    TrainingFailed,
    TrainingProcessDied,
)
from tests.flows.training.jobs import DYING_LINE, ECHO_LINE

ROOT = Path(__file__).resolve().parents[3]
JOBS = "tests.flows.training.jobs"
CLOSES = [(dt.date(2020, 1, 1) + dt.timedelta(days=i), 100.0 + i) for i in range(21)]


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The child imports the test jobs from this checkout; no worker outlives a test."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), path) if p))
    yield
    shutdown_worker()


def _job(ticker: str = "TICK", as_of: str = "2020-01-19") -> TrainingJob:
    return TrainingJob(
        ticker=ticker,
        as_of=as_of,
        holdout_weeks=2,
        strategies=[],
        seed=7,
        tracking_uri="sqlite:///unused.db",
        experiment_id="0",
        parent_run_id="parent",
        fingerprint="f" * 16,
    )


def _run(
    tmp_path: Path, name: str, function: str = "echo", *, max_jobs: int = 5, **options: float
) -> TrainingResult:
    return run_in_child(
        _job(),
        CLOSES,
        workdir=tmp_path / "work" / name,
        max_jobs=max_jobs,
        log_path=tmp_path / "work" / "training-worker.log",
        job_function=f"{JOBS}:{function}",
        warm_imports=(),
        **options,
    )


def _pid(result: TrainingResult) -> int:
    return int(result.timings["pid"])


def _job_log(tmp_path: Path, name: str) -> Path:
    return tmp_path / "work" / worker.JOB_LOG_FOLDER / f"{name}.log"


def test_a_job_and_its_result_round_trip_through_the_worker(tmp_path: Path) -> None:
    result = _run(tmp_path, "TICK-2020-01-19-a")

    (model,) = result.models
    assert (model.name, model.role, model.rmse, model.mape) == ("echo", "baseline", 1.5, 2.5)
    assert model.next_week == [close for _, close in CLOSES[-7:]]
    assert model.params == {"seed": "7"}
    assert (result.held_out_weeks, result.train_until) == (["2020-01-19"], "2020-01-19")
    assert result.train_seconds == 0.25
    assert _pid(result) != os.getpid()
    assert result.timings["worker_jobs"] == 1.0
    assert result.timings["worker_rss_mb"] > 0
    assert result.timings["job_seconds"] > 0
    assert result.child_seconds >= result.timings["job_seconds"]
    # The job's output went to its own log, kept beside the worker's log.
    assert f"{ECHO_LINE} TICK" in _job_log(tmp_path, "TICK-2020-01-19-a").read_text()


def test_a_childs_pricecast_error_comes_back_as_the_same_kind_and_message(
    tmp_path: Path,
) -> None:
    first = _run(tmp_path, "a")
    with pytest.raises(DataError) as raised:
        _run(tmp_path, "b", "bad_data")
    assert type(raised.value) is DataError
    assert str(raised.value) == "the week of 2020-01-06 has 5 closes, 7 needed"

    # A kind defined elsewhere comes back as its nearest kind in pricecast.errors.
    with pytest.raises(ServiceUnavailable) as unavailable:
        _run(tmp_path, "c", "unreadable_champion")
    assert type(unavailable.value) is ServiceUnavailable
    assert str(unavailable.value) == "MLflow at http://u:***@mlflow:5000 failed while loading"

    # The child survived its jobs' errors: the same process runs the next job.
    after = _run(tmp_path, "d")
    assert _pid(after) == _pid(first)
    assert after.timings["worker_jobs"] == 4.0


def test_an_unexpected_error_in_the_job_is_one_line_naming_the_jobs_log(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed) as raised:
        _run(tmp_path, "TICK-bug", "bug")

    message = str(raised.value)
    log = _job_log(tmp_path, "TICK-bug")
    assert type(raised.value) is TrainingFailed
    assert "\n" not in message
    assert message.startswith("training TICK as of 2020-01-19 failed with ValueError: ")
    assert "an unexpected bug" in message and "second line" not in message
    assert str(log) in message
    traceback = log.read_text()
    assert "Traceback" in traceback and "with a second line" in traceback


def test_a_killed_child_is_one_line_naming_the_jobs_own_log(tmp_path: Path) -> None:
    earlier = _run(tmp_path, "TICK-earlier")

    with pytest.raises(TrainingProcessDied) as raised:
        _run(tmp_path, "TICK-killed", "killed")

    message = str(raised.value)
    log = _job_log(tmp_path, "TICK-killed")
    assert "\n" not in message
    assert message.startswith(f"the training process (pid {_pid(earlier)}) was killed by SIGKILL")
    assert "while training TICK as of 2020-01-19" in message
    assert f"its log: {log};" in message
    assert message.endswith("rerun the same --as-of to complete the night")
    # The log holds this job's lines only, not the earlier job's.
    assert DYING_LINE in log.read_text()
    assert ECHO_LINE not in log.read_text()
    # The next job gets a new worker.
    assert _pid(_run(tmp_path, "TICK-after")) != _pid(earlier)


def test_a_stuck_job_is_stopped_after_its_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TrainingProcessDied, match=r"did not finish training TICK .* within 1 s"):
        _run(tmp_path, "TICK-stuck", "stuck", timeout_seconds=1.0)
    assert time.monotonic() - started < 30


def test_a_worker_that_dies_while_starting_names_the_workers_log(tmp_path: Path) -> None:
    log = tmp_path / "work" / "training-worker.log"
    with pytest.raises(TrainingProcessDied) as raised:
        run_in_child(
            _job(),
            CLOSES,
            workdir=tmp_path / "work" / "job",
            log_path=log,
            job_function=f"{JOBS}:echo",
            warm_imports=("no_such_module_for_the_worker",),
        )
    message = str(raised.value)
    assert "exited with code 1 while starting (importing no_such_module_for_the_worker)" in message
    assert f"its log: {log};" in message
    assert "No module named 'no_such_module_for_the_worker'" in log.read_text()


def test_the_idle_worker_exits_after_its_idle_time(tmp_path: Path) -> None:
    workdir = tmp_path / "job"
    write_job(workdir, _job(), CLOSES)
    training = TrainingWorker(
        max_jobs=5,
        idle_seconds=1.0,
        log_path=tmp_path / "training-worker.log",
        warm_imports=(),
        idle_grace_seconds=0.0,
    )
    try:
        done = training.run(
            workdir,
            job_log=tmp_path / "job.log",
            activity="echoing",
            job_function=f"{JOBS}:echo",
        )
        finished = time.monotonic()
        assert done.code == 0
        assert training.process.poll() is None  # waiting for the next job
        assert training.process.wait(timeout=15) == 0
        assert time.monotonic() - finished > 0.5
        assert not training.usable
    finally:
        training.close(kill=True)


def test_the_parent_replaces_a_worker_idle_for_too_long(tmp_path: Path) -> None:
    first = _run(tmp_path, "a", idle_seconds=0.5)
    time.sleep(0.8)
    second = _run(tmp_path, "b", idle_seconds=0.5)

    assert _pid(second) != _pid(first)
    assert second.timings["worker_jobs"] == 1.0
    with pytest.raises(ProcessLookupError):  # the stale worker was closed, not left behind
        os.kill(_pid(first), 0)


def test_the_worker_is_recycled_after_max_jobs(tmp_path: Path) -> None:
    results = [_run(tmp_path, f"job-{i}", max_jobs=2) for i in range(3)]

    pids = [_pid(r) for r in results]
    assert pids[0] == pids[1] != pids[2]
    assert [r.timings["worker_jobs"] for r in results] == [1.0, 2.0, 1.0]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_a_worker_whose_memory_grew_is_replaced_after_its_job(tmp_path: Path) -> None:
    """Each leaky job keeps 40 MB: the job that takes the worker past RETIRE_GROWTH of its first
    job's footprint is its last (though max_jobs allows 5), and the next runs in a fresh one."""
    results = [_run(tmp_path, f"job-{i}", "leaky") for i in range(4)]

    pids = [_pid(r) for r in results]
    assert pids[0] != pids[-1], pids
    first_process = [
        r.timings["worker_rss_mb"] for r, p in zip(results, pids, strict=True) if p == pids[0]
    ]
    bound = first_process[0] * (1 + worker.RETIRE_GROWTH)
    assert all(rss <= bound for rss in first_process[:-1]), first_process
    assert first_process[-1] > bound, first_process
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


@pytest.mark.parametrize(("setting", "threads"), [(None, 1.0), ("0", 0.0), ("2", 2.0)])
def test_tensorflow_in_the_worker_uses_the_configured_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, threads: float
) -> None:
    """PRICECAST_TRAINING_THREADS (default 1; 0 = TensorFlow's own choice) sizes both op pools,
    set before the first job; glibc's malloc arenas are capped at two."""
    from pricecast.settings import get_settings

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if setting is None:
        monkeypatch.delenv("PRICECAST_TRAINING_THREADS", raising=False)
    else:
        monkeypatch.setenv("PRICECAST_TRAINING_THREADS", setting)
    get_settings.cache_clear()
    result = run_in_child(
        _job(),
        CLOSES,
        workdir=tmp_path / "work" / "threads",
        log_path=tmp_path / "work" / "training-worker.log",
        job_function=f"{JOBS}:runtime",
        warm_imports=("tensorflow",),
    )
    assert result.timings["intra_op_threads"] == threads
    assert result.timings["inter_op_threads"] == threads
    assert result.timings["malloc_arena_max"] == 2.0


def test_only_the_newest_job_logs_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "KEPT_JOB_LOGS", 3)
    worker_log = tmp_path / "training-worker.log"
    for i in range(5):
        log = new_job_log(worker_log, f"job-{i}")
        os.utime(log, (1_000_000 + i, 1_000_000 + i))

    kept = sorted(p.name for p in (tmp_path / worker.JOB_LOG_FOLDER).iterdir())
    assert kept == ["job-2.log", "job-3.log", "job-4.log"]
