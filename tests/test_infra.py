"""The services: docker-compose consistency (no Docker here), and `make up` -> nightly against the
three servers -> the run visible through the MLflow and Prefect REST APIs -> `make down`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; `$$` is a literal `$`.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ------------------------------------------------------------------ docker-compose, statically


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution rules (the subset the file uses)."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and operator and operator.startswith(":"))
        if operator in (":?", "?") and unset_or_empty:
            raise MissingVariable(f"{name}: {argument}")
        if operator in (":-", "-") and unset_or_empty:
            return argument
        return value or ""

    return VARIABLE.sub(substitute, text).replace("$$", "$")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def load_compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


def test_compose_required_variables_fail_loudly_and_are_documented() -> None:
    text = COMPOSE.read_text()
    uses = VARIABLE.findall(text)
    required = {name for name, operator, _ in uses if operator in (":?", "?")}
    defaulted = {name for name, operator, _ in uses if operator in (":-", "-")}
    bare = {name for name, operator, _ in uses if not operator}
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD"} <= required
    # A variable used bare must be required somewhere, or compose silently substitutes "".
    assert bare <= required | defaulted, bare - required - defaulted
    documented = env_example()
    assert (required | defaulted | bare) <= set(documented), set(documented)
    # The example as shipped has no password: compose must refuse to start until one is set.
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        load_compose(documented)
    with pytest.raises(MissingVariable, match="POSTGRES_USER"):
        load_compose({"POSTGRES_PASSWORD": "x"})
    assert load_compose({**documented, "POSTGRES_PASSWORD": "s3cret"})["name"] == "pricecast"


def test_compose_services_reference_each_other_consistently() -> None:
    config = load_compose({**env_example(), "POSTGRES_PASSWORD": "s3cret"})
    services = config["services"]
    assert set(services) == {"postgres", "mlflow", "prefect", "serve", "deploy", "worker"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounted = (COMPOSE.parent / source).resolve()
                assert mounted.exists() or source == "../data", (name, volume)
            else:
                assert source in config["volumes"], (name, volume)
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()

    init_sql = (COMPOSE.parent / "postgres-init.sql").read_text()
    databases = {services["postgres"]["environment"]["POSTGRES_DB"]}
    databases |= set(re.findall(r"CREATE DATABASE (\w+)", init_sql))
    mlflow = services["mlflow"]["command"]
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith(
        "@postgres:5432/mlflow"
    )
    assert "--serve-artifacts" in mlflow and "--artifacts-destination" in mlflow
    prefect_env = services["prefect"]["environment"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    serve_env = services["serve"]["environment"]
    urls = [backend, prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"]]
    urls.append(serve_env["PRICECAST_DATABASE_URL"])
    assert {url.rsplit("/", 1)[1] for url in urls} <= databases
    assert serve_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert serve_env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert services["serve"]["command"][:2] == ["pricecast", "serve"]

    # The options the container passes exist on the real CLI.
    from typer.testing import CliRunner

    from flows.cli import app

    for name in ("serve", "deploy", "worker"):
        command = services[name]["command"]
        assert command[:2] == ["pricecast", name]
        help_text = CliRunner().invoke(app, [name, "--help"], terminal_width=200).output
        for option in command[2::2]:
            assert option in help_text, (name, option)

    # Workers scale (`--scale worker=3`): no fixed name or published port; the same services
    # and pool as the deployment they run, which is registered before any worker starts.
    worker, deploy = services["worker"], services["deploy"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"] == deploy["environment"] == serve_env
    assert (
        worker["command"][worker["command"].index("--pool") + 1]
        == (deploy["command"][deploy["command"].index("--pool") + 1])
    )
    assert worker["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "unless-stopped" and deploy["restart"] == "no"
    # An init as PID 1 adopts the worker's detached resident training process.
    assert worker["init"] is True


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+?) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path


# ------------------------------------------------------------------ services.py, for real


def load_services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pricecast_services", ROOT / "infra/services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


@pytest.mark.postgres
def test_own_postgres_cluster_starts_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a usable Postgres, `up` creates one under PRICECAST_HOME with the installed binaries.

    The home is outside pytest's tmp tree: when running as root, the cluster runs as the
    `postgres` account, which cannot enter root's private tmp folders.
    """
    services = load_services()
    try:
        services.find_pg_binary("initdb")
    except Exception as exc:  # noqa: BLE001 - no server binaries installed here
        if IN_CI:
            pytest.fail(f"CI=true: this test needs the PostgreSQL server binaries ({exc})")
        pytest.skip(str(exc))
    home = Path(tempfile.mkdtemp(prefix="pricecast-own-pg-"))
    home.chmod(0o755)
    monkeypatch.setenv("PRICECAST_HOME", str(home))
    from pricecast.settings import Settings

    settings = Settings()
    layout = services.layout_for(settings)
    try:
        admin_url = services.start_own_postgres(layout, settings, timeout=60)
        assert services.postgres_reachable(admin_url) is None
        assert services.ensure_databases(admin_url, ["pricecast"]) == ["pricecast"]
        assert services.ensure_databases(admin_url, ["pricecast"]) == []  # idempotent
        # A second start finds it running on the same port.
        assert services.start_own_postgres(layout, settings, timeout=60) == admin_url
    finally:
        services.stop_own_postgres(layout)
        shutil.rmtree(home, ignore_errors=True)
    assert services.postgres_reachable(admin_url) is not None


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    services = load_services()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        spec = services.ServerSpec("mlflow", port, ["true"], {})
        layout = services.Layout(tmp_path / "services")
        with pytest.raises(Exception, match=rf"port {port} .* taken .*PRICECAST_MLFLOW_PORT"):
            services.launch_server(spec, layout)


# ------------------------------------------------------------------ make up -> nightly -> down


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _json(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.postgres
def test_make_up_nightly_visible_in_mlflow_and_prefect_then_make_down(pg_admin_engine) -> None:
    """The three servers from `make up`, a nightly against them, the run seen through both REST
    APIs, `make down`. Our databases (own prefix) are dropped at the end, whatever happened."""
    from sqlalchemy import text

    home = Path(tempfile.mkdtemp(prefix="pricecast-infra-"))
    home.chmod(0o755)  # a Postgres of our own would run as `postgres` and must enter it
    prefix = f"pc_infra_{os.getpid()}_{uuid.uuid4().hex[:6]}_"
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
    make = ["make", "--no-print-directory", "-o", "install"]  # the venv is already installed
    try:
        up = _run([*make, "up"], env, timeout=420)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in up.stdout
        again = _run([*make, "up"], env, timeout=240)  # idempotent: finds them running
        assert again.returncode == 0 and again.stdout.count("already running") == 3, again.stdout

        exports = _run([sys.executable, "infra/services.py", "env"], env, timeout=60)
        assert exports.returncode == 0, exports.stderr
        service_env = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        assert service_env["PRICECAST_DATABASE_URL"].endswith(f"/{prefix}pricecast")
        night_env = {
            **env, **service_env,
            "PRICECAST_EPOCHS": "1", "PRICECAST_HOLDOUT_WEEKS": "2", "PRICECAST_WINDOW_WEEKS": "4",
        }  # fmt: skip
        as_of = "2024-03-10"
        pricecast = str(Path(sys.executable).parent / "pricecast")
        night = _run(
            [pricecast, "nightly", "--ticker", "INFRA-T", "--source", "synthetic",
             "--as-of", as_of, "--json"],
            night_env, timeout=600,
        )  # fmt: skip
        assert night.returncode == 0, night.stdout[-2000:] + night.stderr[-4000:]
        # (MLflow prints "View run ... at: <url>" lines on stdout when it talks to a server.)
        result = json.loads(night.stdout[re.search(r"^\{", night.stdout, re.M).start() :])
        assert result["trained"] is True

        # MLflow REST: the night's parent run (tagged as_of) and its candidate runs, whose
        # artifacts went through the server into the served store under PRICECAST_HOME.
        mlflow = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow"
        experiment = _json(
            "GET", f"{mlflow}/experiments/get-by-name?experiment_name=pricecast-INFRA-T"
        )
        experiment_id = experiment["experiment"]["experiment_id"]
        runs = _json(
            "POST", f"{mlflow}/runs/search",
            {"experiment_ids": [experiment_id], "max_results": 100},
        )["runs"]  # fmt: skip
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        parents = [t for t in tags if "mlflow.parentRunId" not in t]
        assert [t.get("as_of") for t in parents] == [as_of]
        assert parents[0]["prefect.flow_run_id"] == result["flow_run_id"]
        scored = [r for r in runs if any(m["key"] == "mape" for m in r["data"].get("metrics", []))]
        assert scored, runs
        assert all(r["info"]["artifact_uri"].startswith("mlflow-artifacts:") for r in runs)
        assert any((home / "services" / "mlartifacts").rglob("*.csv"))

        # Prefect REST: the flow run, completed, with its as_of.
        prefect = f"http://127.0.0.1:{prefect_port}/api"
        flow_run = _json("GET", f"{prefect}/flow_runs/{result['flow_run_id']}")
        assert flow_run["state"]["type"] == "COMPLETED"
        assert flow_run["parameters"]["as_of"] == as_of
        # Its task runs reach the server through the task-run recorder, which `make up` runs
        # 50 events at a time, at least every second (flows/prefect_api.py): all there, ended.
        admin = _json("GET", f"{prefect}/admin/settings")["server"]["services"]
        recorder = admin["task_run_recorder"]
        assert (recorder["batch_size"], recorder["flush_interval"]) == (50, 1.0), recorder
        of_the_night = {"flow_runs": {"id": {"any_": [result["flow_run_id"]]}}}
        deadline = time.monotonic() + 10
        while True:
            task_runs = _json("POST", f"{prefect}/task_runs/filter", of_the_night)
            states = sorted((t["name"], (t.get("state") or {}).get("type")) for t in task_runs)
            if len(states) >= 5 and all(state == "COMPLETED" for _, state in states):
                break
            assert time.monotonic() < deadline, f"task runs after 10 s: {states}"
            time.sleep(0.5)

        # The UI in the browser calls the API on our port (Prefect would assume 4200).
        ui_settings = _json("GET", f"http://127.0.0.1:{prefect_port}/ui-settings")
        assert ui_settings["api_url"] == f"{prefect}"

        # The worker `up` started polls the work pool (the universe night's batches run on it).
        workers = _json("POST", f"{prefect}/work_pools/pricecast/workers/filter", {})
        online = [w["name"] for w in workers if w["status"] == "ONLINE"]
        assert online == [f"pricecast-local-{prefect_port}"], workers

        status = _run([*make, "status"], env, timeout=120)
        assert status.stdout.count(" running ") >= 4, status.stdout
        assert "work pool pricecast" in status.stdout, status.stdout
    finally:
        down = _run([*make, "down"], env, timeout=240)
        with pg_admin_engine.connect() as conn:
            for role in ("pricecast", "mlflow", "prefect"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}{role}" WITH (FORCE)'))
        shutil.rmtree(home, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "mlflow    stopped" in down.stdout and "prefect   stopped" in down.stdout
    assert "worker    stopped" in down.stdout, down.stdout
    for port in (mlflow_port, prefect_port):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)
