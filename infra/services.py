"""Start, stop and inspect the local services without Docker: Postgres, MLflow and Prefect servers,
and one `pricecast worker` for the Prefect work pool (the universe night's batches run on it).

`make up | down | status` call this. Everything binds to 127.0.0.1; logs, pid files, data and the
state of what was started live in PRICECAST_HOME/services/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from flows.prefect_api import prefect_server_tuning
from pricecast.errors import ConfigError, PricecastError, ServiceUnavailable
from pricecast.processes import process_alive
from pricecast.settings import MLFLOW_DEFAULTS, Settings, get_settings
from pricecast.urls import mask_url

HOST = "127.0.0.1"
PG_BINARY_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/bin")
HEALTH_PATHS = {"mlflow": "/health", "prefect": "/api/health"}


@dataclass(frozen=True)
class Layout:
    """Where the services keep their files, under PRICECAST_HOME/services."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect-home"

    def pid_file(self, service: str) -> Path:
        return self.root / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"


@dataclass
class State:
    """What `up` started, so `down` stops exactly that and `status` knows the URLs."""

    pg_mode: str  # "reused" (a server that already ran) or "own" (initdb under PRICECAST_HOME)
    pg_admin_url: str
    databases: dict[str, str]  # role (pricecast, mlflow, prefect) -> database name
    mlflow_port: int
    prefect_port: int
    notes: list[str] = field(default_factory=list)
    worker_pool: str | None = None  # the pool of the worker `up` started (None: none started)

    def database_url(self, role: str, driver: str = "postgresql+psycopg2") -> str:
        url = make_url(self.pg_admin_url).set(drivername=driver, database=self.databases[role])
        return url.render_as_string(hide_password=False)

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, path: Path) -> State | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


# ---------------------------------------------------------------- small system helpers


def port_in_use(port: int) -> bool:
    """True if something already listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: ports in TIME_WAIT after a clean stop count as free, as they do for servers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def first_free_port(start: int, attempts: int = 50) -> int:
    for port in range(start, start + attempts):
        if not port_in_use(port):
            return port
    raise ServiceUnavailable(
        f"no free port on {HOST} in {start}..{start + attempts - 1}; "
        "set PRICECAST_PG_PORT to a free range"
    )


def find_pg_binary(name: str) -> Path:
    """A Postgres server binary (initdb, pg_ctl): the newest installed version first."""
    candidates: list[Path] = []
    for pattern in PG_BINARY_DIRS:
        root = Path("/")
        matches = sorted(root.glob(pattern.lstrip("/")), key=_version_key, reverse=True)
        candidates += [m / name for m in matches]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        f"Postgres binary {name!r} not found in /usr/lib/postgresql/*/bin, /usr/local/bin or PATH; "
        "install the PostgreSQL server (apt-get install postgresql) or start a Postgres and set "
        "PRICECAST_PG_ADMIN_URL to it"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    parts = [p for p in path.parts if p.replace(".", "").isdigit()]
    return tuple(int(x) for x in parts[0].split(".")) if parts else (0,)


def find_venv_binary(name: str) -> Path:
    """mlflow / prefect from the same environment as this interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"{name!r} not found next to {sys.executable} or on PATH; run `make install`")


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def read_pid(layout: Layout, service: str, port: int) -> int | None:
    """The pid we recorded for `service`, if that process still runs and is still ours."""
    path = layout.pid_file(service)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = process_cmdline(pid)
    # Guard against a recycled pid: the process must be the server we started, on our port.
    if process_alive(pid) and service in cmdline and str(port) in cmdline:
        return pid
    path.unlink(missing_ok=True)
    return None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text_lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text_lines[-lines:])


# ---------------------------------------------------------------- Postgres


def _engine(url: str):
    return create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}, poolclass=NullPool
    )


def postgres_reachable(admin_url: str) -> str | None:
    """None if we can log in to `admin_url`, else the reason we cannot."""
    engine = _engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return None
    except OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
    finally:
        engine.dispose()


def ensure_databases(admin_url: str, names: Sequence[str]) -> list[str]:
    """Create the databases that do not exist yet; returns the ones created."""
    created = []
    engine = _engine(admin_url)
    try:
        with engine.connect() as conn:
            existing = {row[0] for row in conn.execute(text("select datname from pg_database"))}
            for name in names:
                if name not in existing:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                    created.append(name)
    finally:
        engine.dispose()
    return created


def _as_postgres_user() -> dict:
    """initdb and postgres refuse to run as root: drop to the `postgres` account then."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ConfigError(
            "running as root, and there is no `postgres` user to run our own Postgres as; "
            "run `make up` as a normal user or set PRICECAST_PG_ADMIN_URL to a running server"
        ) from exc
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(argv: list[str], what: str, log: Path, **kwargs) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ServiceUnavailable(
            f"{what} failed ({' '.join(argv[:2])}): {' | '.join(detail)}; see {log}"
        )


def start_own_postgres(layout: Layout, settings: Settings, timeout: float) -> str:
    """initdb (once) and start a Postgres cluster under PRICECAST_HOME; returns its admin URL."""
    drop = _as_postgres_user()
    layout.pg_dir.mkdir(parents=True, exist_ok=True)
    if drop:
        os.chown(layout.pg_dir, drop["user"], drop["group"])
    if not (layout.pg_data / "PG_VERSION").exists():
        initdb = find_pg_binary("initdb")
        _run(
            [str(initdb), "-D", str(layout.pg_data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-instructions"],
            "initdb", layout.pg_log, **drop,
        )  # fmt: skip
        with (layout.pg_data / "postgresql.conf").open("a") as conf:
            # Localhost TCP only; the socket lives with the data, not in /var/run.
            conf.write(
                f"\nlisten_addresses = '{HOST}'\nunix_socket_directories = '{layout.pg_dir}'\n"
            )
    pg_ctl = find_pg_binary("pg_ctl")
    status = subprocess.run(
        [str(pg_ctl), "-D", str(layout.pg_data), "status"], capture_output=True, text=True, **drop
    )
    port = _own_postgres_port(layout)
    if status.returncode != 0 or port is None:
        port = first_free_port(settings.pg_port)
        _run(
            [str(pg_ctl), "-D", str(layout.pg_data), "-l", str(layout.pg_log), "-o", f"-p {port}",
             "-w", "-t", str(int(timeout)), "start"],
            "starting Postgres", layout.pg_log, **drop,
        )  # fmt: skip
    return f"postgresql+psycopg2://postgres@{HOST}:{port}/postgres"


def _own_postgres_port(layout: Layout) -> int | None:
    """The port of our running cluster, from postmaster.pid (line 4)."""
    try:
        lines = (layout.pg_data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def stop_own_postgres(layout: Layout) -> bool:
    if not (layout.pg_data / "postmaster.pid").exists():
        return False
    pg_ctl = find_pg_binary("pg_ctl")
    _run(
        [str(pg_ctl), "-D", str(layout.pg_data), "-m", "fast", "-w", "stop"],
        "stopping Postgres", layout.pg_log, **_as_postgres_user(),
    )  # fmt: skip
    return True


# ---------------------------------------------------------------- MLflow and Prefect servers


@dataclass(frozen=True)
class ServerSpec:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str]

    #: False for the worker: it listens on no port (its `port` is the Prefect server's, which
    #: its name carries so a recycled pid is not mistaken for it).
    listens: bool = True

    @property
    def health_url(self) -> str:
        return f"http://{HOST}:{self.port}{HEALTH_PATHS[self.name]}"


def mlflow_spec(state: State, layout: Layout) -> ServerSpec:
    argv = [
        str(find_venv_binary("mlflow")), "server",
        "--backend-store-uri", state.database_url("mlflow"),
        "--serve-artifacts", "--artifacts-destination", str(layout.mlflow_artifacts),
        "--host", HOST, "--port", str(state.mlflow_port),
        # One worker: it saves ~300 MB, and uvicorn's multi-worker mode leaves Nagle's algorithm
        # on, which costs every kept-alive request ~40 ms (flows/tracking/keepalive.py).
        "--workers", "1",
    ]  # fmt: skip
    # Job execution (GenAI judges) would add seven ~200 MB huey workers we never use; no
    # telemetry (pricecast.settings.MLFLOW_DEFAULTS).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **MLFLOW_DEFAULTS}
    return ServerSpec("mlflow", state.mlflow_port, argv, env=env)


def prefect_spec(state: State, layout: Layout) -> ServerSpec:
    argv = [
        str(find_venv_binary("prefect")), "server", "start",
        "--host", HOST, "--port", str(state.prefect_port),
    ]  # fmt: skip
    api_url = f"http://{HOST}:{state.prefect_port}/api"
    env = {
        "PREFECT_HOME": str(layout.prefect_home),
        # The UI asks the browser to call this URL; without it the UI assumes port 4200.
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(state.prefect_port),
        "PREFECT_API_DATABASE_CONNECTION_URL": state.database_url(
            "prefect", driver="postgresql+asyncpg"
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **prefect_server_tuning(os.environ),
    }
    return ServerSpec("prefect", state.prefect_port, argv, env=env)


WORKER_STARTED = "started!"  # what Prefect's worker logs once it polls its pool


def worker_name(state: State) -> str:
    return f"pricecast-local-{state.prefect_port}"


def worker_spec(state: State, settings: Settings) -> ServerSpec:
    """One `pricecast worker` for the work pool, pointed at the three services."""
    pool = state.worker_pool or settings.worker_pool
    argv = [
        str(find_venv_binary("pricecast")), "worker",
        "--pool", pool, "--limit", "1", "--name", worker_name(state),
    ]  # fmt: skip
    env = {
        "PRICECAST_HOME": str(settings.resolved_home),
        "PRICECAST_DATABASE_URL": state.database_url("pricecast"),
        "MLFLOW_TRACKING_URI": state.mlflow_url,
        "PREFECT_API_URL": f"{state.prefect_url}/api",
        "PRICECAST_WORKER_POOL": pool,
        "PYTHONUNBUFFERED": "1",  # its log shows "started!" when it is, not when a buffer fills
    }
    return ServerSpec("worker", state.prefect_port, argv, env=env, listens=False)


def wait_worker_started(
    spec: ServerSpec, layout: Layout, pid: int, offset: int, timeout: float
) -> None:
    """Until the worker's log (after `offset`) says it started; an exit is an error with its log."""
    log = layout.log_file(spec.name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), log.open("rb") as handle:
            handle.seek(offset)
            if WORKER_STARTED in handle.read().decode(errors="replace"):
                return
        if not process_alive(pid):
            layout.pid_file(spec.name).unlink(missing_ok=True)
            raise ServiceUnavailable(
                f"worker exited while starting; last log lines of {log}:\n{log_tail(log)}"
            )
        time.sleep(0.5)
    stop_server(spec.name, spec.port, layout)
    raise ServiceUnavailable(
        f"worker did not start within {timeout:.0f} s (stopped it); see {log} or raise "
        "PRICECAST_SERVICES_TIMEOUT_SECONDS"
    )


def launch_server(spec: ServerSpec, layout: Layout) -> tuple[int, str]:
    """Start `spec` in the background unless it already runs. Returns (pid, what happened)."""
    pid = read_pid(layout, spec.name, spec.port)
    if pid is not None:
        return pid, "already running"
    if spec.listens and port_in_use(spec.port):
        variable = f"PRICECAST_{spec.name.upper()}_PORT"
        raise ServiceUnavailable(
            f"{spec.name}: port {spec.port} on {HOST} is taken by another process; "
            f"stop it, or choose another port with {variable}=<port> make up"
        )
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.log_file(spec.name).open("ab") as out:
        process = subprocess.Popen(
            spec.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **spec.env},
            cwd=layout.root,
            start_new_session=True,  # its own process group: `down` stops it and its workers
        )
    layout.pid_file(spec.name).write_text(str(process.pid))
    return process.pid, "started"


def wait_healthy(spec: ServerSpec, layout: Layout, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(spec.health_url):
            return
        if not process_alive(pid):
            layout.pid_file(spec.name).unlink(missing_ok=True)
            raise ServiceUnavailable(
                f"{spec.name} exited while starting; last log lines of "
                f"{layout.log_file(spec.name)}:\n{log_tail(layout.log_file(spec.name))}"
            )
        time.sleep(0.5)
    stop_server(spec.name, spec.port, layout)
    raise ServiceUnavailable(
        f"{spec.name} did not answer {spec.health_url} within {timeout:.0f} s (stopped it); "
        f"see {layout.log_file(spec.name)} or raise PRICECAST_SERVICES_TIMEOUT_SECONDS"
    )


def stop_server(name: str, port: int, layout: Layout, grace: float = 20.0) -> bool:
    """SIGTERM the process group we started, SIGKILL after `grace` seconds. False if not running."""
    pid = read_pid(layout, name, port)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # Reap it if it is our child (it is not when `down` runs in another process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    layout.pid_file(name).unlink(missing_ok=True)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process_alive(pgid) or _any_member_alive(pgid)


def _any_member_alive(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


# ---------------------------------------------------------------- commands


def database_names(settings: Settings) -> dict[str, str]:
    prefix = settings.services_db_prefix
    return {role: f"{prefix}{role}" for role in ("pricecast", "mlflow", "prefect")}


def layout_for(settings: Settings) -> Layout:
    return Layout(settings.resolved_home / "services")


def up(settings: Settings, *, own_postgres: bool = False) -> State:
    layout = layout_for(settings)
    layout.root.mkdir(parents=True, exist_ok=True)
    timeout = settings.services_timeout_seconds
    previous = State.load(layout.state_file)
    notes: list[str] = []
    if previous is not None and previous.pg_mode == "own":
        own_postgres = True  # keep using the cluster we created before
    reason = None if own_postgres else postgres_reachable(settings.pg_admin_url)
    if not own_postgres and reason is None:
        pg_mode, admin_url = "reused", settings.pg_admin_url
    else:
        if reason is not None:
            shown = mask_url(settings.pg_admin_url)
            notes.append(f"no usable Postgres at {shown} ({reason}); created our own")
        pg_mode, admin_url = "own", start_own_postgres(layout, settings, timeout)
    state = State(
        pg_mode=pg_mode,
        pg_admin_url=admin_url,
        databases=database_names(settings),
        mlflow_port=settings.mlflow_port,
        prefect_port=settings.prefect_port,
        notes=notes,
        worker_pool=settings.worker_pool,
    )
    created = ensure_databases(admin_url, list(state.databases.values()))
    if created:
        notes.append(f"created databases: {', '.join(created)}")
    state.save(layout.state_file)
    for line in notes:
        print(line)
    print(f"postgres  {pg_mode}: {mask_url(admin_url)}")
    specs = [mlflow_spec(state, layout), prefect_spec(state, layout)]
    # Both servers boot at once (each takes tens of seconds: imports and schema migrations).
    launched: list[tuple[ServerSpec, int, str]] = []
    try:
        for spec in specs:
            launched.append((spec, *launch_server(spec, layout)))
        for spec, pid, action in launched:
            print(f"{spec.name:<9} {action} (pid {pid}), waiting for {spec.health_url} ...")
            wait_healthy(spec, layout, pid, timeout)
    except BaseException:
        for spec, _, action in launched:
            if action == "started":
                stop_server(spec.name, spec.port, layout)
        raise
    # The worker after the servers: it needs the Prefect API (it creates the pool if missing).
    worker = worker_spec(state, settings)
    log = layout.log_file(worker.name)
    offset = log.stat().st_size if log.exists() else 0
    pid, action = launch_server(worker, layout)
    print(f"{'worker':<9} {action} (pid {pid}) for work pool {state.worker_pool} ...")
    if action == "started":
        wait_worker_started(worker, layout, pid, offset, timeout)
    print()
    print_status(settings)
    return state


def down(settings: Settings) -> None:
    layout = layout_for(settings)
    state = State.load(layout.state_file)
    if state is None:
        print(f"nothing to stop: no services were started from {layout.root}")
        return
    services = [("prefect", state.prefect_port), ("mlflow", state.mlflow_port)]
    if state.worker_pool is not None:
        services.insert(0, ("worker", state.prefect_port))  # first: it talks to the servers
    for name, port in services:
        print(f"{name:<9} {'stopped' if stop_server(name, port, layout) else 'was not running'}")
    if state.pg_mode == "own":
        print(f"postgres  {'stopped' if stop_own_postgres(layout) else 'was not running'}")
    else:
        # Not ours to stop; our databases stay so the next `up` finds the data again.
        print(f"postgres  left running (it was already up): {mask_url(state.pg_admin_url)}")


def service_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(service, state, url, detail) for each service, from the recorded state and live checks."""
    layout = layout_for(settings)
    state = State.load(layout.state_file)
    if state is None:
        return [(name, "not started", "-", f"run `make up` (state: {layout.root})")
                for name in ("postgres", "mlflow", "prefect")]  # fmt: skip
    reason = postgres_reachable(state.pg_admin_url)
    if reason is None:
        pg_state = "running"
    elif state.pg_mode == "own" and not (layout.pg_data / "postmaster.pid").exists():
        pg_state = "stopped"
    else:
        pg_state = f"down ({reason})"
    rows = [("postgres", pg_state, mask_url(state.pg_admin_url), state.pg_mode)]
    for name, port, url in (
        ("mlflow", state.mlflow_port, state.mlflow_url),
        ("prefect", state.prefect_port, state.prefect_url),
    ):
        pid = read_pid(layout, name, port)
        healthy = http_ok(f"http://{HOST}:{port}{HEALTH_PATHS[name]}")
        if pid is None:
            status = "stopped" if not healthy else "running (not started by us)"
        else:
            status = "running" if healthy else "unhealthy (starting, or see log)"
        detail = f"pid {pid}, log {layout.log_file(name)}" if pid else str(layout.log_file(name))
        rows.append((name, status, url, detail))
    if state.worker_pool is not None:
        pid = read_pid(layout, "worker", state.prefect_port)
        detail = f"pid {pid}, log {layout.log_file('worker')}" if pid else "run `make up`"
        where = f"work pool {state.worker_pool}"
        rows.append(("worker", "running" if pid else "stopped", where, detail))
    return rows


def env_exports(state: State) -> list[str]:
    return [
        f"export PRICECAST_DATABASE_URL={_exportable(state.database_url('pricecast'))}",
        f"export MLFLOW_TRACKING_URI={state.mlflow_url}",
        f"export PREFECT_API_URL={state.prefect_url}/api",
    ]


def print_status(settings: Settings) -> None:
    rows = service_rows(settings)
    for name, status, url, detail in rows:
        print(f"{name:<9} {status:<12} {url:<48} {detail}")
    state = State.load(layout_for(settings).state_file)
    if state is None or not any(row[1].startswith("running") for row in rows[1:]):
        return
    print('\nPoint pricecast at them (or: eval "$(.venv/bin/python infra/services.py env)"):')
    for line in env_exports(state):
        print(f"  {line}")
    print(f"\nUIs: MLflow {state.mlflow_url}   Prefect {state.prefect_url}")


def _exportable(url: str) -> str:
    """Secrets are never printed: a password shows as *** for the user to fill in."""
    parsed: URL = make_url(url)
    return parsed.render_as_string(hide_password=parsed.password is not None)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    try:
        yield
    except PricecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; run `make down` to stop what was started", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head`
        sys.exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="infra/services.py",
        description="Local Postgres + MLflow server + Prefect server without Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start what is not running; idempotent")
    up_parser.add_argument(
        "--own-postgres",
        action="store_true",
        help="create a Postgres under PRICECAST_HOME even if one already runs on the admin URL",
    )
    sub.add_parser("down", help="stop what `up` started (a Postgres that was already up stays)")
    sub.add_parser("status", help="each service with its URL and state, and the env exports")
    sub.add_parser("env", help="only the export lines, for eval")
    args = parser.parse_args(argv)
    settings = get_settings()
    with _clean_errors():
        if args.command == "up":
            up(settings, own_postgres=args.own_postgres)
        elif args.command == "down":
            down(settings)
        elif args.command == "status":
            print_status(settings)
        else:
            state = State.load(layout_for(settings).state_file)
            if state is None:
                raise ServiceUnavailable("no services recorded; run `make up` first")
            print("\n".join(env_exports(state)))


if __name__ == "__main__":
    main()
