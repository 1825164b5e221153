"""A night whose Prefect server goes away in the middle: a real `prefect server` of the test's own,
a real `pricecast nightly` held at its plan step (the test-only hook `pricecast.faults`) while the
test stops the server. The night's work does not need the server (Prefect 3 runs its tasks in the
process): it trains, promotes, stores its forecast and is recorded done; only its report and its
flow run's end cannot reach Prefect. The command ends with a warning for the report and one
`error:` line naming the server and the rerun, exit 1; once the server is back the rerun finds
the night trained."""

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
TICKER = "LOST-N"
AS_OF = "2024-03-10"


def _status(home: Path) -> str | None:
    engine = make_engine(f"sqlite:///{home / 'pricecast.db'}")
    try:
        with session_scope(engine) as session:
            row = get_run(session, ticker=TICKER, as_of=dt.date.fromisoformat(AS_OF))
            return None if row is None else row.status
    finally:
        engine.dispose()


def test_night_that_loses_its_prefect_server_fails_in_one_line_and_reruns(
    tmp_path: Path, own_prefect_server: PrefectServer
) -> None:
    server = own_prefect_server
    url = server.url
    home = tmp_path / "home"
    fault = tmp_path / "fault"
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(home),
        "PRICECAST_EPOCHS": "1",
        "PRICECAST_HOLDOUT_WEEKS": "2",
        "PRICECAST_WINDOW_WEEKS": "4",
        # Prefect's client retries a refused connection for about a minute per call; once is
        # enough to see what the user gets.
        "PREFECT_CLIENT_MAX_RETRIES": "1",
    }
    argv = [str(PRICECAST), "nightly", "--ticker", TICKER, "--source", "synthetic",
            "--as-of", AS_OF]  # fmt: skip
    log_path = tmp_path / "night.log"
    try:
        with log_path.open("wb") as log:
            night = subprocess.Popen(
                argv,
                env={**env, "PRICECAST_FAULT_AT": "plan", "PRICECAST_FAULT_FILE": str(fault)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(fault.exists, 180, "the night at its plan step", night)

        server.stop()
        fault.unlink()
        code = night.wait(timeout=600)
        output = log_path.read_text(errors="replace")
        assert code == 1, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: lost the Prefect API at {url} during the night of {TICKER} (ConnectError: "
            "[Errno 111] Connection refused). Once it is back, rerun `pricecast nightly "
            f"--ticker {TICKER} --source synthetic --as-of {AS_OF}`: a night already "
            "trained does not train again"
        ], output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert "warning: the night's report was not published to Prefect" in output
        assert _status(home) == "done"  # nothing it stored is lost, nothing left running

        # The server is back: the rerun the line names completes without training again.
        server.start()
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"nightly {TICKER} as of {AS_OF}: no training" in rerun.stdout, rerun.stdout
        assert _status(home) == "done"
    finally:
        if "night" in locals() and night.poll() is None:
            night.kill()
            night.wait(timeout=30)
