"""A work pool of another type than `process`, on the session's real Prefect server: `pricecast
deploy` and `pricecast worker` both refuse it in one line (Prefect's process worker alone would
only warn, then take its runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.flows.universe.test_pool import ROOT

pytestmark = pytest.mark.slow


def test_a_pool_of_another_type_is_refused_by_deploy_and_worker(
    prefect_server: str, tmp_path: Path
) -> None:
    pool = f"not-process-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(tmp_path / "home"),
        "PRICECAST_TRAINING_RESIDENT": "false",
    }
    created = httpx.post(
        f"{prefect_server}/work_pools/", json={"name": pool, "type": "docker"}, timeout=30
    )
    assert created.status_code == 201, created.text

    for argv in (["deploy", "--pool", pool], ["worker", "--pool", pool]):
        result = subprocess.run(
            [sys.executable, "-m", "tests.flows.universe.cli_app", *argv],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, (argv, result.stdout[-2000:], result.stderr[-2000:])
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert f"work pool {pool!r}" in line and "'docker'" in line, line
        assert "Traceback" not in result.stderr
