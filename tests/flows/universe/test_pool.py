"""The universe night on a work pool: a real `prefect server` (the session's `prefect_server`), the
pool and deployments from `pricecast deploy`, two `pricecast worker` processes, Postgres shared by
every process and an MLflow SQLite store they all reach. The scenario of `scenario.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pricecast.processes import process_alive
from tests.conftest import prefect_api, stop_group, wait_for
from tests.flows.universe.scenario import (
    AS_OF,
    GOOD,
    MISSING,
    SMALL_ENV,
    check_first_night,
    check_rerun,
    fix_missing,
    write_universe,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[3]


def cli(env: dict[str, str], *argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.flows.universe.cli_app", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def pool_env(prefect_server: str, pg_url: str, tmp_path: Path) -> dict[str, str]:
    """What every process gets: the three URLs, one PRICECAST_HOME, a pool of its own."""
    from mlflow import MlflowClient

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=mlflow_uri).search_experiments()  # its schema, before the workers
    return {
        **os.environ,
        **SMALL_ENV,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(tmp_path / "home"),
        "PRICECAST_DATABASE_URL": pg_url,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PRICECAST_WORKER_POOL": f"test-pool-{uuid.uuid4().hex[:8]}",
        "PRICECAST_UNIVERSE_POLL_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }


@contextmanager
def two_workers(
    pool_env: dict[str, str], tmp_path: Path, *, count: int = 2
) -> Iterator[tuple[list[Path], list[subprocess.Popen[bytes]]]]:
    """`count` (two) `pricecast worker --limit 1` processes on the pool (their logs, the
    processes); stopped (their process groups, flow runs and training processes included) at
    the end."""
    processes, logs = [], []
    for index in range(1, count + 1):
        log = tmp_path / f"worker-{index}.log"
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.flows.universe.cli_app",
                        "worker",
                        "--limit",
                        "1",
                        "--name",
                        f"test-worker-{index}",
                    ],
                    cwd=ROOT,
                    env=pool_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
        logs.append(log)
    try:
        yield logs, processes
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _online(api: httpx.Client, pool: str) -> int:
    response = api.post(
        f"/work_pools/{pool}/workers/filter", json={"workers": {"status": {"any_": ["ONLINE"]}}}
    )
    return len(response.json()) if response.status_code == 200 else 0


def _runs(api: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.post("/flow_runs/filter", json={**body, "limit": 200})
    response.raise_for_status()
    return list(response.json())


def _universe_runs(api: httpx.Client) -> list[dict[str, Any]]:
    """Finished nightly-universe runs, newest first (the cron schedule adds future ones)."""
    return _runs(
        api,
        {
            "flows": {"name": {"any_": ["nightly-universe"]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}},
            "sort": "START_TIME_DESC",
        },
    )


def _children(api: httpx.Client, parent_id: str) -> list[dict[str, Any]]:
    return _runs(api, {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}})


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(result.stdout))
    except json.JSONDecodeError:
        raise AssertionError(result.stdout[-2000:] + result.stderr[-4000:]) from None


def test_universe_night_on_a_pool_with_two_workers_then_a_rerun(
    pool_env: dict[str, str], tmp_path: Path, prefect_server: str
) -> None:
    pool = pool_env["PRICECAST_WORKER_POOL"]
    universe, missing = write_universe(tmp_path)
    assert cli(pool_env, "universe", "import", str(universe)).returncode == 0
    deployed = cli(pool_env, "deploy", "--cron", "0 3 * * *", timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    assert f"work pool {pool} (created, process type, no limit)" in deployed.stdout
    assert f"deployment nightly-universe/{pool}" in deployed.stdout
    api = prefect_api(prefect_server)
    scheduled = api.get(f"/deployments/name/nightly-universe/{pool}").json()
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["0 3 * * *"]
    assert scheduled["work_pool_name"] == pool
    assert scheduled["entrypoint"] == "flows.universe.flow.nightly_universe"
    # Prefect's engine directly (no workspace supervisor process), by the workers' `python`.
    batch_deployment = api.get(f"/deployments/name/nightly-batch/{pool}").json()
    for deployment in (scheduled, batch_deployment):
        assert deployment["job_variables"] == {"command": "python -m prefect.engine"}

    with two_workers(pool_env, tmp_path) as (logs, workers):
        wait_for(lambda: _online(api, pool) == 2, 120, "two workers online")

        first = cli(pool_env, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json")

        diagnostics = first.stderr[-3000:] + "".join(log.read_text()[-3000:] for log in logs)
        assert first.returncode == 1, diagnostics
        payload = _json(first)
        check_first_night(payload, pool_env["PRICECAST_DATABASE_URL"],
                          pool_env["MLFLOW_TRACKING_URI"])  # fmt: skip
        parent = _universe_runs(api)[0]
        assert parent["state"]["type"] == "FAILED"
        batches = _children(api, parent["id"])
        # Two workers online, a parent outside the pool: two batch runs, one per worker.
        assert len(batches) == 2, batches
        assert all(b["work_pool_name"] == pool for b in batches)
        nights = [n for b in batches for n in _children(api, b["id"])]
        assert sorted(n["name"] for n in nights) == sorted([*GOOD, MISSING])
        assert {b["state"]["type"] for b in batches} == {"COMPLETED", "FAILED"}
        # Each worker's trainings ran in its resident training process, one per worker.
        first_training = training_processes(pool_env["PRICECAST_DATABASE_URL"], GOOD)
        assert set(first_training.values()) <= {True}, first_training
        assert 1 <= len(first_training) <= 2, first_training

        fix_missing(missing)
        again = cli(pool_env, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json")

        assert again.returncode == 0, again.stderr[-3000:]
        check_rerun(_json(again), pool_env["PRICECAST_DATABASE_URL"])
        rerun = _universe_runs(api)[0]
        assert rerun["id"] != parent["id"] and rerun["state"]["type"] == "COMPLETED"
        (batch,) = _children(api, rerun["id"])
        assert [n["name"] for n in _children(api, batch["id"])] == [MISSING]
        # The rerun is another flow run of one of the workers: the same resident trained it.
        rerun_training = training_processes(pool_env["PRICECAST_DATABASE_URL"], [MISSING])
        assert set(rerun_training) <= set(first_training), (rerun_training, first_training)

        # Stopped as `make down`, systemd or Docker stop them: SIGTERM, SIGKILL if the Prefect
        # worker is still there after a grace period. Each worker's resident training process
        # (started detached, nobody's child) follows its worker either way.
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"worker {worker.pid} still running 60 s after SIGTERM: SIGKILL")
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
        wait_for(lambda: not any(map(process_alive, first_training)), 30, "residents gone")
    api.close()


def training_processes(database_url: str, tickers: Sequence[str]) -> dict[int, bool]:
    """The pids of the processes that trained these tickers' nights as of AS_OF, each with
    whether it was a worker's resident training process."""
    from storage.db import make_engine, session_scope
    from storage.universe import nights_as_of

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            nights = nights_as_of(session, as_of=AS_OF, tickers=list(tickers))
            timings = [dict(night.timings or {}) for night in nights.values()]
    finally:
        engine.dispose()
    assert len(timings) == len(tickers), timings
    return {int(t["child_worker_pid"]): t.get("child_worker_resident") == 1.0 for t in timings}


def test_a_worker_whose_python_lacks_pricecast_is_named_in_the_error(
    pool_env: dict[str, str], tmp_path: Path, prefect_server: str
) -> None:
    """A plain `prefect worker start` whose PATH leads to another `python` (no pricecast there):
    the batch run crashes before any night; the ticker's error says where to look and what to
    do, nothing is recorded as done, and the night runs once a right worker takes the rerun."""
    pool = pool_env["PRICECAST_WORKER_POOL"]
    assert cli(pool_env, "universe", "add", "WRONG-PY", "--source", "synthetic:3").returncode == 0
    assert cli(pool_env, "deploy", timeout=300).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = elsewhere / "python"  # as an interpreter without Prefect or pricecast answers
    python.write_text('#!/bin/sh\necho "python: No module named prefect" >&2\nexit 1\n')
    python.chmod(0o755)
    env = {**pool_env, "PATH": f"{elsewhere}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    prefect = Path(sys.executable).parent / "prefect"
    log = tmp_path / "plain-worker.log"
    api = prefect_api(prefect_server)
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(prefect), "worker", "start", "--pool", pool, "--type", "process"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _online(api, pool) == 1, 120, "the plain worker online")
        night = cli(pool_env, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json")
        assert night.returncode == 1, night.stderr[-3000:] + log.read_text()[-3000:]
        (ticker,) = _json(night)["tickers"]
        assert ticker["status"] == "failed" and not ticker["trained"]
        assert "ended Crashed" in ticker["error"], ticker["error"]
        assert "the log of the worker that ran it says why" in ticker["error"]
        assert "start them with `pricecast worker`" in ticker["error"]
        assert "No module named prefect" in log.read_text()
    finally:
        # Prefect's own worker, not ours: in one full CI run it ignored SIGTERM (still polling
        # 15 minutes later; `pricecast worker` handles the signals itself, see pool_worker).
        # What this test checks is the error above, so SIGKILL after the grace.
        stop_group(worker, grace=60)

    with two_workers(pool_env, tmp_path, count=1) as (logs, _):
        wait_for(lambda: _online(api, pool) >= 1, 120, "a pricecast worker online")
        again = cli(pool_env, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json")
        assert again.returncode == 0, again.stderr[-3000:] + logs[0].read_text()[-2000:]
        (ticker,) = _json(again)["tickers"]
        assert (ticker["status"], ticker["trained"]) == ("done", True), ticker
    api.close()
