"""What a user sees after one nightly against the `make up` servers, in headless Chromium: the
MLflow runs table opened from the link pricecast prints, the registered model page, the Prefect
flow run and its artifact with links into MLflow. Assertions are on the DOM text; screenshots
are saved under the test's temporary folder for a person to look at."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.ui.browser import dump_dom, screenshot, visible_text

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
TICKER = "UI-T"
AS_OF = "2024-03-10"
MAKE = ["make", "--no-print-directory", "-o", "install"]  # the venv is already installed


@dataclass(frozen=True)
class Night:
    """One nightly run against the `make up` servers: its `--json` result and the UIs."""

    result: dict
    mlflow_ui: str
    prefect_ui: str


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def night(pg_admin_engine, chromium: str) -> Iterator[Night]:  # noqa: ANN001
    """`make up` (own ports, own databases), one nightly, then `make down` and the databases
    dropped, whatever happened."""
    from sqlalchemy import text

    home = Path(tempfile.mkdtemp(prefix="pricecast-ui-"))
    home.chmod(0o755)
    prefix = f"pc_ui_{os.getpid()}_{uuid.uuid4().hex[:6]}_"
    mlflow_port, prefect_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PRICECAST_HOME": str(home),
        "PRICECAST_SERVICES_DB_PREFIX": prefix,
        "PRICECAST_MLFLOW_PORT": str(mlflow_port),
        "PRICECAST_PREFECT_PORT": str(prefect_port),
        "PREFECT_HOME": str(home / "prefect-client"),
    }
    for name in ("PRICECAST_DATABASE_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(name, None)
    try:
        up = _run([*MAKE, "up"], env, timeout=420)
        assert up.returncode == 0, up.stdout + up.stderr
        exports = _run([sys.executable, "infra/services.py", "env"], env, timeout=60)
        assert exports.returncode == 0, exports.stderr
        service_env = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        night_env = {
            **env, **service_env,
            "PRICECAST_EPOCHS": "1", "PRICECAST_HOLDOUT_WEEKS": "3", "PRICECAST_WINDOW_WEEKS": "4",
        }  # fmt: skip
        pricecast = str(Path(sys.executable).parent / "pricecast")
        argv = [pricecast, "nightly", "--ticker", TICKER, "--source", "synthetic", "--as-of", AS_OF]
        ran = _run([*argv, "--json"], night_env, timeout=600)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-4000:]
        # (MLflow prints "View run ... at: <url>" lines on stdout when it talks to a server.)
        start = re.search(r"^\{", ran.stdout, re.M)
        assert start is not None, ran.stdout[-2000:]
        yield Night(
            result=json.loads(ran.stdout[start.start() :]),
            mlflow_ui=f"http://127.0.0.1:{mlflow_port}",
            prefect_ui=f"http://127.0.0.1:{prefect_port}",
        )
    finally:
        _run([*MAKE, "down"], env, timeout=240)
        with pg_admin_engine.connect() as conn:
            for role in ("pricecast", "mlflow", "prefect"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}{role}" WITH (FORCE)'))
        shutil.rmtree(home, ignore_errors=True)


def _page_text(url: str, shot: Path) -> str:
    screenshot(url, shot)
    return visible_text(dump_dom(url))


def test_the_printed_mlflow_link_opens_the_runs_table_with_scores_and_decisions(
    night: Night, tmp_path: Path
) -> None:
    link = night.result["mlflow"]["runs_table"]
    # (`pricecast nightly` prints the same link as "MLflow: <link>", the artifact links it.)
    assert link.startswith(f"{night.mlflow_ui}/#/experiments/")

    text = _page_text(link, tmp_path / "mlflow-runs.png")

    # The runs table (not the GenAI overview), the night's parent run expanded to its models.
    assert "matching runs" in text, text[:3000]
    for column in ("mape", "rmse", "decision"):
        assert f" {column} " in text, f"no {column!r} column: {text[:3000]}"
    promoted = night.result["promoted"]
    for name in ("retrain", "fresh", "naive"):
        assert f"{name} {AS_OF}" in text, f"no run {name} {AS_OF}: {text[:3000]}"
    assert "promoted" in text and "rejected" in text and "baseline" in text
    winner = next(c for c in night.result["candidates"] if c["name"] == promoted)
    assert str(winner["mape"])[:5] in text  # its MAPE in the mape column


def test_the_registered_model_page_names_the_champion_at_the_top(
    night: Night, tmp_path: Path
) -> None:
    version = night.result["champion_version"]
    url = f"{night.mlflow_ui}/#/models/pricecast-{TICKER}"

    text = _page_text(url, tmp_path / "mlflow-model.png")

    # The model's description (above the tags and versions) names the champion.
    description = f"@champion is version {version}"
    assert description in text, text[:3000]
    assert text.index(description) < text.index("Versions")
    assert f"promoted as of {AS_OF}" in text  # the version's one-line description (cut)
    assert "meta." not in text  # the metadata is one JSON artifact, not dozens of tags
    with httpx.Client(base_url=f"{night.mlflow_ui}/api/2.0/mlflow", timeout=30) as api:
        found = api.get(
            "/model-versions/get",
            params={"name": f"pricecast-{TICKER}", "version": str(version)},
        ).json()["model_version"]
    assert len(found["tags"]) <= 10, found["tags"]


def test_the_prefect_flow_run_and_its_artifact_link_to_the_mlflow_runs(
    night: Night, tmp_path: Path
) -> None:
    flow_run_id = night.result["flow_run_id"]
    run_page = f"{night.prefect_ui}/runs/flow-run/{flow_run_id}"

    text = _page_text(run_page, tmp_path / "prefect-flow-run.png")

    assert "Can't connect to Server API" not in text
    assert f"Flow Run: {TICKER} {AS_OF}" in text, text[:2000]
    assert f"ticker:{TICKER}" in text and f"as_of:{AS_OF}" in text and "Artifacts" in text
    assert "decision: promote" in text  # the flow's log states the decision

    with httpx.Client(base_url=f"{night.prefect_ui}/api", timeout=30) as api:
        artifacts = api.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        ).json()
    (artifact,) = [a for a in artifacts if a["key"] == "nightly-ui-t"]
    assert artifact["task_run_id"] is None  # on the flow run itself
    artifact_page = f"{night.prefect_ui}/artifacts/artifact/{artifact['id']}"
    screenshot(artifact_page, tmp_path / "prefect-artifact.png")
    dom = dump_dom(artifact_page)
    assert f"Nightly {TICKER} as of {AS_OF}" in visible_text(dom)

    links = {html.unescape(h) for h in re.findall(r'href="([^"]+)"', dom)}
    mlflow_links = sorted(h for h in links if h.startswith(night.mlflow_ui))
    candidate_runs = [c["mlflow_run_id"] for c in night.result["candidates"]]
    for run_id in candidate_runs:
        assert any(f"/runs/{run_id}" in h for h in mlflow_links), mlflow_links
    assert any("/versions/" in h for h in mlflow_links), mlflow_links
    # A link from the artifact opens the run in MLflow, named with the night's date, and links
    # back to this flow run.
    promoted = night.result["promoted"]
    promoted_run = next(
        c["mlflow_run_id"] for c in night.result["candidates"] if c["name"] == promoted
    )
    run_link = next(h for h in mlflow_links if f"/runs/{promoted_run}" in h)
    run_text = _page_text(run_link, tmp_path / "mlflow-run.png")
    assert f"{promoted} {AS_OF}" in run_text, run_text[:3000]
    parent_text = _page_text(night.result["mlflow"]["parent_run"], tmp_path / "mlflow-parent.png")
    assert "its Prefect flow run" in parent_text, parent_text[:3000]
