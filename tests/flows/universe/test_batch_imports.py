"""A batch imports MLflow's client on a thread as it starts, not in its first night's plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_batch_imports_mlflow_on_a_thread_while_its_lanes_are_set_up() -> None:
    # A fresh interpreter: this one has MLflow imported by other tests.
    script = """
import sys, threading
from flows.universe import batch
assert "mlflow" not in sys.modules
thread = batch.prewarm_lane_imports()
assert thread is not threading.current_thread() and thread.daemon
thread.join(120)
assert "mlflow" in sys.modules and "mlflow.tracking" in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
