"""A universe night whose Prefect server goes away while it waits for its batch runs: a real
`prefect server` of the test's own (stopped by the test), the pool from `pricecast deploy`, no
worker (so the batch waits), and a real `pricecast nightly --all` process. It ends with one
`error:` line naming the server and the rerun, exit 1, and nothing of the night kept as done."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.db import make_engine, session_scope
from storage.runs import get_run
from tests.conftest import PrefectServer, wait_for

pytestmark = pytest.mark.slow

PRICECAST = Path(sys.executable).parent / "pricecast"
AS_OF = "2021-06-27"


def test_universe_night_that_loses_its_prefect_server_says_so_in_one_line(
    tmp_path: Path, own_prefect_server: PrefectServer
) -> None:
    server = own_prefect_server
    url = server.url
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(tmp_path / "home"),
        "PRICECAST_UNIVERSE_POLL_SECONDS": "1",
        # Prefect's client retries a refused connection for about a minute per call; once is
        # enough to see what the user gets.
        "PREFECT_CLIENT_MAX_RETRIES": "1",
    }

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PRICECAST), *argv], env=env, capture_output=True, text=True, timeout=300
        )

    try:
        assert cli("deploy", "--pool", "lost").returncode == 0
        assert cli("universe", "add", "LOST-A", "--source", "synthetic:1").returncode == 0
        log_path = tmp_path / "night.log"
        with log_path.open("wb") as log:
            night = subprocess.Popen(
                [str(PRICECAST), "nightly", "--all", "--as-of", AS_OF, "--where", "pool",
                 "--pool", "lost"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(
            lambda: "Scheduled" in log_path.read_text(errors="replace"),
            120,
            "the batch run waiting for a worker",
            night,
        )

        server.stop()
        code = night.wait(timeout=600)
        output = log_path.read_text(errors="replace")
        assert code == 1, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: lost the Prefect API at {url} during the universe night (ConnectError: "
            "[Errno 111] Connection refused). The batch runs already submitted stay with the "
            "workers: a running one may finish or fail, one not yet started runs once a worker "
            "can take it. Once it is back, rerun `pricecast nightly "
            f"--all --as-of {AS_OF}`: it skips the nights already done"
        ], output[-3000:]
        assert "Traceback" not in output, output[-3000:]

        # Nothing of the night is kept as done: the rerun the line names runs the ticker.
        engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'pricecast.db'}")
        try:
            with session_scope(engine) as session:
                row = get_run(session, ticker="LOST-A", as_of=dt.date.fromisoformat(AS_OF))
                assert row is None or row.status != "done", row.status
        finally:
            engine.dispose()
    finally:
        if "night" in locals() and night.poll() is None:
            night.kill()
            night.wait(timeout=30)
