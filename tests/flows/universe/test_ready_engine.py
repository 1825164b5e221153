"""`flows.universe.ready_engine` with a real `pricecast worker` and the session's Prefect server:
the worker keeps an engine process ready while it runs nothing, hands it the next flow run (the
run's process is that one), and starts the next one once the run ended; a run whose environment
differs, or a ready process killed while it waited, costs only that run's speed; a run in a ready
process is cancelled and drained like any other; a stopping worker stops its ready process."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.universe.fanout import ENGINE_COMMAND
from pricecast.processes import process_alive
from tests.conftest import prefect_api, wait_for
from tests.flows.universe.test_pool import ROOT, cli, pool_env, two_workers

__all__ = ["pool_env"]  # the fixture
pytestmark = [pytest.mark.slow, pytest.mark.postgres]

READY = re.compile(r"engine process (\d+) ready for the next flow run")


@pytest.fixture
def env(pool_env: dict[str, str]) -> dict[str, str]:
    """The pool deployed; workers without a resident training process (these runs train
    nothing) and with the tests importable by their flow runs (the sleeping flow)."""
    wanted = {**pool_env, "PRICECAST_TRAINING_RESIDENT": "false", "PYTHONPATH": str(ROOT)}
    deployed = cli(wanted, "deploy", timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    return wanted


@pytest.fixture
def api(prefect_server: str) -> Iterator[httpx.Client]:
    with prefect_api(prefect_server) as client:
        yield client


def ready_pids(log: Path) -> list[int]:
    return [int(pid) for pid in READY.findall(log.read_text(errors="replace"))]


def next_ready(log: Path, after: list[int] | None = None) -> int:
    """The pid of the worker's ready engine process, once there is one not in `after`."""
    seen = set(after or [])
    return wait_for(
        lambda: next((p for p in reversed(ready_pids(log)) if p not in seen), None),
        120,
        f"an engine process ready (log: {log.read_text(errors='replace')[-2000:]})",
    )


def batch_run(api: httpx.Client, pool: str, job_variables: dict[str, Any] | None = None) -> str:
    """An empty batch run on the pool's batch deployment (it opens no night)."""
    deployment = api.get(f"/deployments/name/nightly-batch/{pool}").json()
    body: dict[str, Any] = {"parameters": {"members": [], "dates": []}}
    if job_variables:
        body["job_variables"] = job_variables
    run = api.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
    run.raise_for_status()
    return str(run.json()["id"])


def sleeping_run(api: httpx.Client, pool: str, seconds: float) -> str:
    """A run of `tests.flows.universe.sleepy` on the pool, started by our engine command."""
    flow = api.post("/flows/", json={"name": "pricecast-test-sleep"}).json()
    deployment = api.post(
        "/deployments/",
        json={
            "name": f"sleep-{uuid.uuid4().hex[:6]}",
            "flow_id": flow["id"],
            "work_pool_name": pool,
            "entrypoint": "tests.flows.universe.sleepy.sleep_for",
            "job_variables": {"command": ENGINE_COMMAND},
        },
    )
    deployment.raise_for_status()
    run = api.post(
        f"/deployments/{deployment.json()['id']}/create_flow_run",
        json={"parameters": {"seconds": seconds}},
    )
    run.raise_for_status()
    return str(run.json()["id"])


def state(api: httpx.Client, run: str) -> str:
    return str(api.get(f"/flow_runs/{run}").json()["state"]["type"])


def process_of(api: httpx.Client, run: str) -> int:
    """The pid of the process that ran (or runs) `run`, as its worker recorded it."""
    found = wait_for(
        lambda: api.get(f"/flow_runs/{run}").json().get("infrastructure_pid"), 60, "its pid"
    )
    return int(str(found).rsplit(":", 1)[-1])


def finished(api: httpx.Client, run: str, wanted: str = "COMPLETED") -> None:
    wait_for(lambda: state(api, run) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), 120, run)
    assert state(api, run) == wanted


def test_the_worker_hands_its_ready_process_the_next_run_and_readies_another(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    pool = env["PRICECAST_WORKER_POOL"]
    with two_workers(env, tmp_path, count=1) as ([log], _):
        first = next_ready(log)
        run = batch_run(api, pool)
        finished(api, run)
        assert process_of(api, run) == first
        second = next_ready(log, after=[first])
        wait_for(lambda: not process_alive(first), 30, "the first engine process exited")
        again = batch_run(api, pool)
        finished(api, again)
        assert process_of(api, again) == second
        text = log.read_text(errors="replace")
    assert "differs" not in text and "exited (" not in text, text[-3000:]


def test_a_run_with_another_environment_starts_its_own_and_the_next_one_fits(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    pool = env["PRICECAST_WORKER_POOL"]
    marked = {"env": {"PRICECAST_TEST_MARK": "1"}}
    with two_workers(env, tmp_path, count=1) as ([log], _):
        first = next_ready(log)
        run = batch_run(api, pool, marked)
        finished(api, run)
        assert process_of(api, run) != first
        text = log.read_text(errors="replace")
        assert "differs from the engine process started ahead of time" in text
        assert "PRICECAST_TEST_MARK" in text
        wait_for(lambda: not process_alive(first), 30, "the unfit engine process stopped")
        second = next_ready(log, after=[first])
        again = batch_run(api, pool, marked)
        finished(api, again)
        assert process_of(api, again) == second


def test_a_ready_process_killed_while_it_waits_costs_only_speed(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    pool = env["PRICECAST_WORKER_POOL"]
    with two_workers(env, tmp_path, count=1) as ([log], _):
        first = next_ready(log)
        os.kill(first, signal.SIGKILL)
        time.sleep(0.5)
        run = batch_run(api, pool)
        finished(api, run)
        assert process_of(api, run) != first
        next_ready(log, after=[first])


def test_a_run_in_a_ready_process_is_cancelled_like_any_other(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    pool = env["PRICECAST_WORKER_POOL"]
    with two_workers(env, tmp_path, count=1) as ([log], _):
        first = next_ready(log)
        run = sleeping_run(api, pool, 120)
        wait_for(lambda: state(api, run) == "RUNNING", 60, "the sleeping run started")
        assert process_of(api, run) == first
        api.post(
            f"/flow_runs/{run}/set_state", json={"state": {"type": "CANCELLING"}, "force": True}
        ).raise_for_status()
        started = time.monotonic()
        finished(api, run, "CANCELLED")
        wait_for(lambda: not process_alive(first), 30, "the cancelled run's process exited")
        assert time.monotonic() - started < 60


def test_a_stopping_worker_drains_the_run_in_its_ready_process_then_stops_the_next(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    """SIGTERM while a run sleeps in the ready process: the worker waits for it (it counts as a
    running flow run), the run completes, and no ready process is left behind."""
    pool = env["PRICECAST_WORKER_POOL"]
    with two_workers(env, tmp_path, count=1) as ([log], [worker]):
        first = next_ready(log)
        run = sleeping_run(api, pool, 8)
        wait_for(lambda: state(api, run) == "RUNNING", 60, "the sleeping run started")
        assert process_of(api, run) == first
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(timeout=90)
        finished(api, run)
        text = log.read_text(errors="replace")
        assert "stops once its 1 running flow run(s) end" in text, text[-3000:]
    alive = [pid for pid in ready_pids(log) if process_alive(pid)]
    assert not alive, f"engine process(es) {alive} outlived their worker"


def test_a_ready_process_whose_worker_is_killed_exits(env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL to the worker alone (no drain, no clean-up of its own): its idle ready process
    sees its stdin close and exits, rather than waiting for a run forever."""
    with two_workers(env, tmp_path, count=1) as ([log], [worker]):
        first = next_ready(log)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        wait_for(lambda: not process_alive(first), 30, "the orphaned engine process exited")


def test_a_run_taken_before_the_ready_process_is_ready_waits_for_it(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    """A run scheduled before the worker starts: the worker takes it while its ready process
    still imports, hands it that process once it is ready, and the run completes."""
    pool = env["PRICECAST_WORKER_POOL"]
    run = batch_run(api, pool)
    with two_workers(env, tmp_path, count=1) as ([log], _):
        finished(api, run)
        assert process_of(api, run) == ready_pids(log)[0]


def test_a_run_of_another_command_leaves_the_ready_process_for_the_next_of_ours(
    env: dict[str, str], tmp_path: Path, api: httpx.Client
) -> None:
    """A run whose job names another command (here the engine by its full path) starts its own
    process as Prefect does; the ready process stays and takes the next run of ours."""
    pool = env["PRICECAST_WORKER_POOL"]
    with two_workers(env, tmp_path, count=1) as ([log], _):
        first = next_ready(log)
        other = batch_run(api, pool, {"command": f"{sys.executable} -m prefect.engine"})
        finished(api, other)
        assert process_of(api, other) != first
        ours = batch_run(api, pool)
        finished(api, ours)
        assert process_of(api, ours) == first
        assert "differs" not in log.read_text(errors="replace")
