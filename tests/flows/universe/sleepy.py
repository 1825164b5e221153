"""A flow that sleeps, for the tests that cancel or drain a flow run while it runs."""

from __future__ import annotations

import os
import time

from prefect import flow


@flow(name="pricecast-test-sleep")
def sleep_for(seconds: float = 60.0) -> int:
    """Sleep `seconds`; the pid of the process that ran it."""
    time.sleep(seconds)
    return os.getpid()
