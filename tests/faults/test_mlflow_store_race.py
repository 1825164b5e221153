"""Two processes opening the same new MLflow SQLite store at once: the creation and migration
run under a file lock, so both succeed (issue 12: "Online migration expected to match one row")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

OPEN_STORE = textwrap.dedent(
    """
    import sys, time
    from flows.tracking.tracker import Tracker
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    tracker = Tracker(sys.argv[1])
    print(tracker.ensure_experiment(sys.argv[3]))
    """
)


@pytest.mark.parametrize("attempt", range(2))
def test_two_processes_create_one_new_sqlite_store(tmp_path: Path, attempt: int) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    start = time.time() + 8.0  # both have imported MLflow by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, uri, str(start), f"RACE{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outcomes = [p.communicate(timeout=180) for p in processes]
    for process, (out, err) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert out.strip()
    assert (tmp_path / "mlflow" / "mlflow.db.lock").exists()

    from flows.tracking.tracker import Tracker

    client = Tracker(uri).client
    assert {e.name for e in client.search_experiments()} >= {"pricecast-RACE0", "pricecast-RACE1"}
