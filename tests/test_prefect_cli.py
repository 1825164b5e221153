"""The Prefect CLI commands a user types, against the session's real `prefect server start`.

Each must exit 0 without a 422: prefect 3.8.8's client breaks with fastapi >= 0.151 (issue 11).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Only the CLI's own start-up and one API call: generous for a small, shared machine.
CLI_TIMEOUT = 180.0
POOL = "pricecast-cli-pool"
TICKER = "CLI-T"
# Once a year, so the server's scheduler adds a handful of future runs, not a hundred.
YEARLY = "0 2 1 1 *"

PrefectCli = Callable[..., str]

_APPLY_DEPLOYMENT = """
import sys
from flows.schedule.serve import build_deployments
deployment = build_deployments([sys.argv[1]], source="synthetic", cron=sys.argv[3])[0]
print(deployment.apply(work_pool_name=sys.argv[2]))
"""


@pytest.fixture(scope="module")
def client_env(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What a user's shell has: the server's API URL; a throwaway PREFECT_HOME of its own."""
    return {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-cli-home")),
        # Wide enough that rich's tables never cut a name or an id.
        "COLUMNS": "250",
    }


@pytest.fixture(scope="module")
def prefect(client_env: dict[str, str]) -> PrefectCli:
    """Run `prefect ARGS...`; fail on a non-zero exit or a 422 anywhere in its output."""
    binary = str(Path(sys.executable).parent / "prefect")

    def run(*args: str) -> str:
        result = subprocess.run(
            [binary, *args], env=client_env, capture_output=True, text=True, timeout=CLI_TIMEOUT
        )
        output = result.stdout + result.stderr
        command = " ".join(["prefect", *args])
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{output[-3000:]}"
        assert "Unprocessable Entity" not in output, f"`{command}` met a 422:\n{output[-3000:]}"
        return result.stdout

    return run


@pytest.fixture(scope="module")
def work_pool(prefect: PrefectCli) -> str:
    output = prefect("work-pool", "create", POOL, "--type", "process")
    assert f"Created work pool '{POOL}'" in output, output
    return POOL


@pytest.fixture(scope="module")
def deployment_id(client_env: dict[str, str], work_pool: str) -> str:
    """The project's nightly deployment for TICKER, registered on the work pool."""
    result = subprocess.run(
        [sys.executable, "-c", _APPLY_DEPLOYMENT, TICKER, work_pool, YEARLY],
        env=client_env, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("group", ["flow-run", "deployment", "work-pool"])
def test_ls_answers(prefect: PrefectCli, group: str) -> None:
    prefect(group, "ls")


def test_created_work_pool_is_listed(prefect: PrefectCli, work_pool: str) -> None:
    listing = prefect("work-pool", "ls")
    assert re.search(rf"{re.escape(work_pool)}\s+.*process", listing), listing


def test_deployment_is_listed_with_its_pool(
    prefect: PrefectCli, deployment_id: str, work_pool: str
) -> None:
    listing = prefect("deployment", "ls")
    row = next((line for line in listing.splitlines() if deployment_id in line), None)
    assert row is not None, listing
    assert f"nightly/nightly-{TICKER}" in row and work_pool in row, row


def test_deployment_run_creates_a_flow_run_listed_by_flow_run_ls(
    prefect: PrefectCli, deployment_id: str
) -> None:
    output = prefect("deployment", "run", f"nightly/nightly-{TICKER}")
    created = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert created is not None, output
    run_id = created.group(1)

    # Only the table's first rows show by default (sorted by start time, scheduled runs
    # first), so look the run up by flow name, as JSON.
    listed = json.loads(prefect("flow-run", "ls", "--flow-name", "nightly", "--limit", "200",
                                "--output", "json"))  # fmt: skip
    run = next((r for r in listed if r["id"] == run_id), None)
    assert run is not None, [r["id"] for r in listed]
    assert run["deployment_id"] == deployment_id
    assert run["parameters"] == {"ticker": TICKER, "source": "synthetic"}
    assert run["state"]["type"] == "SCHEDULED"
