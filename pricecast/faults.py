"""TEST-ONLY fault injection points of the night (used by tests/faults/; never set in production).

`fault_point(step)` does nothing unless `PRICECAST_FAULT_AT` names `step` (one of ingest, plan,
training, promotion, forecast, record, release: after the night's work, before the unlock).
Then the process writes its pid to `$PRICECAST_FAULT_FILE` and waits (at most
`PRICECAST_FAULT_WAIT_SECONDS`, default 300) until the test deletes that file: the test injects
its fault (restarts Postgres, kills the MLflow server or the training process, starts a second
night) while the night stands at that step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STEPS = ("ingest", "plan", "training", "promotion", "forecast", "record", "release")


def fault_point(step: str) -> None:
    """Pause here if a fault test asked for this step (see the module docstring)."""
    if os.environ.get("PRICECAST_FAULT_AT") != step:
        return
    marker = os.environ.get("PRICECAST_FAULT_FILE")
    if not marker:
        return
    path = Path(marker)
    path.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + float(os.environ.get("PRICECAST_FAULT_WAIT_SECONDS", "300"))
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
