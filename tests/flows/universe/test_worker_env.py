"""What `pricecast worker` hands the Prefect worker and so every flow run it starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flows.universe.deploy import worker_env
from flows.universe.fanout import ENGINE_COMMAND
from pricecast.settings import Settings


def test_the_engine_command_finds_this_interpreter_first_on_path(tmp_path: Path) -> None:
    here = str(Path(sys.executable).parent)
    settings = Settings(home=tmp_path / "home")
    env = worker_env(settings, {"PATH": f"/usr/bin{os.pathsep}{here}{os.pathsep}/bin"})

    assert env["PATH"].split(os.pathsep) == [here, "/usr/bin", "/bin"]  # first, once
    assert env["PRICECAST_HOME"] == str((tmp_path / "home").resolve())
    # The deployments' command, resolved as the process worker resolves it (the flow run's
    # PATH), is this interpreter, which has Prefect and pricecast.
    program, *arguments = ENGINE_COMMAND.split()
    found = shutil.which(program, path=env["PATH"])
    assert found is not None and Path(found).parent == Path(here)
    checked = subprocess.run(
        [found, "-c", "import prefect.engine, flows.universe.batch"],
        env={**os.environ, "PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert arguments == ["-m", "prefect.engine"]


def test_without_a_path_the_interpreter_comes_before_the_default(tmp_path: Path) -> None:
    env = worker_env(Settings(home=tmp_path), {})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PATH"].split(os.pathsep)[1:] == [p for p in os.defpath.split(os.pathsep) if p]


def test_flow_runs_send_no_telemetry_unless_the_user_said_otherwise(tmp_path: Path) -> None:
    env = worker_env(Settings(home=tmp_path), {})
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["DO_NOT_TRACK"] == "1" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    exported = worker_env(Settings(home=tmp_path), {"MLFLOW_DISABLE_TELEMETRY": "false"})
    assert exported["MLFLOW_DISABLE_TELEMETRY"] == "false"
