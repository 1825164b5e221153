"""A `pricecast worker` through a Prefect server outage that Prefect's own worker does not survive:
a real `prefect server` of the test's own, stopped until Prefect's worker gives up (its client's
retries off and a poll every 0.5 s: about a minute instead of a quarter of an hour), then started
again on the same port and database. The same worker process, under the same name, takes the
next universe night and trains it in the resident training process it started before the
outage; stopped while it runs that night, it lets the night end and then stops. A worker stopped
while its server is down stops too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from flows.universe.pool_worker import STOP_GRACE_SECONDS, flow_run_processes
from pricecast.processes import process_alive
from tests.conftest import PrefectServer, wait_for
from tests.flows.nightly_data import trend_prices, write_csv
from tests.flows.universe.scenario import AS_OF, SMALL_ENV
from tests.flows.universe.test_pool import ROOT, _online, cli, training_processes, two_workers

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_worker_outlives_a_prefect_outage_and_takes_the_next_night(
    pg_url: str, tmp_path: Path, own_prefect_server: PrefectServer
) -> None:
    from mlflow import MlflowClient

    server = own_prefect_server
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=mlflow_uri).search_experiments()  # its schema, before the worker
    pool = f"outage-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **SMALL_ENV,
        "PREFECT_API_URL": server.url,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(tmp_path / "home"),
        "PRICECAST_DATABASE_URL": pg_url,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PRICECAST_WORKER_POOL": pool,
        "PRICECAST_UNIVERSE_POLL_SECONDS": "1",
    }
    # Prefect's worker gives up after four rounds of three failed polls, the wait doubling each
    # round; each failed call first retries for about a minute by default. Only the worker runs
    # without retries: the commands keep Prefect's (a server that just started may answer 503).
    worker_env = {**env, "PREFECT_CLIENT_MAX_RETRIES": "0", "PREFECT_WORKER_QUERY_SECONDS": "0.5"}
    api = httpx.Client(base_url=server.url, timeout=30)
    try:
        source = write_csv(tmp_path / "OUT-A.csv", trend_prices())
        assert cli(env, "universe", "add", "OUT-A", "--source", f"csv:{source}").returncode == 0
        assert cli(env, "deploy", "--pool", pool, timeout=300).returncode == 0

        with two_workers(worker_env, tmp_path, count=1) as ([log], [worker]):
            wait_for(lambda: _online(api, pool) == 1, 120, "the worker online", worker)
            found = re.search(r"resident training process (\d+)", log.read_text())
            assert found, log.read_text()[-3000:]
            resident = int(found.group(1))

            _outlive_an_outage(server, api, pool, log, worker)
            _stop_while_it_runs_a_night(env, pg_url, log, worker, resident)

        (tmp_path / "second").mkdir()
        _stop_while_the_server_is_down(server, worker_env, tmp_path / "second")
    finally:
        api.close()


def _outlive_an_outage(
    server: PrefectServer,
    api: httpx.Client,
    pool: str,
    log: Path,
    worker: subprocess.Popen[bytes],
) -> None:
    """The server stopped until Prefect's worker gives up, then started again: the same worker
    process is online again under the same name."""
    server.stop()
    wait_for(lambda: "gave up" in log.read_text(), 300, "Prefect's worker to give up")
    assert worker.poll() is None, log.read_text()[-3000:]
    text = log.read_text()
    assert f"the Prefect API at {server.url} stopped answering" in text
    assert "waiting for the API to answer again" in text

    server.start()
    wait_for(
        lambda: "answers again" in log.read_text() and log.read_text().count("started!") == 2,
        120,
        "the worker started again",
        worker,
    )
    wait_for(lambda: _online(api, pool) == 1, 60, "the worker online again", worker)
    names = [w["name"] for w in api.post(f"/work_pools/{pool}/workers/filter").json()]
    assert names == ["test-worker-1"], names  # the same worker, not a second one


def _stop_while_it_runs_a_night(
    env: dict[str, str], pg_url: str, log: Path, worker: subprocess.Popen[bytes], resident: int
) -> None:
    """The next universe night, with the worker stopped (SIGTERM, as `make down` or systemd stop
    it) while it runs it: it takes no new flow runs, lets the running one end, then stops."""
    night = subprocess.Popen(
        [sys.executable, "-m", "tests.flows.universe.cli_app", "nightly", "--all",
         "--as-of", AS_OF.isoformat(), "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: bool(flow_run_processes(worker.pid)), 180, "the worker's batch run", night)
    worker.send_signal(signal.SIGTERM)
    out, err = night.communicate(timeout=600)

    assert night.returncode == 0, err[-3000:] + log.read_text()[-3000:]
    (outcome,) = json.loads(out)["tickers"]
    assert (outcome["ticker"], outcome["status"], outcome["trained"]) == ("OUT-A", "done", True)
    # Trained in the resident the worker started before the outage.
    assert training_processes(pg_url, ["OUT-A"]) == {resident: True}
    assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert (
        "SIGTERM: worker 'test-worker-1' takes no new flow runs and stops once its 1 "
        "running flow run(s) end"
    ) in text, text[-3000:]
    assert text.rstrip().endswith("Worker 'test-worker-1' stopped!"), text[-3000:]
    wait_for(lambda: not process_alive(resident), 30, "the resident gone with its worker")


def _stop_while_the_server_is_down(
    server: PrefectServer, worker_env: dict[str, str], folder: Path
) -> None:
    """A worker stopped while its server is down stops (Prefect's own handlers were swallowed
    then: it ran on until it gave up, and was then started again)."""
    with two_workers(worker_env, folder, count=1) as ([log], [worker]):
        # Its own start (the pool may still list the first worker as online).
        wait_for(lambda: "started!" in log.read_text(), 120, "a second worker started", worker)
        server.stop()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_GRACE_SECONDS + 30) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "SIGTERM: stopping worker 'test-worker-1'" in text, text[-3000:]
        assert "gave up" not in text and "starting worker" not in text, text[-3000:]
