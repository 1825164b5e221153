"""Shared fixtures: isolated state folders, and real databases (SQLite file and PostgreSQL).

Postgres tests use the server on 127.0.0.1:5432 (PRICECAST_TEST_PG_URL overrides). Each test
gets a database of its own, dropped at the end of the session. Under CI=true a missing Postgres
fails the run instead of skipping.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

# Before anything imports prefect: no telemetry (there is no network), no user-level state.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PG_ADMIN_URL = os.environ.get(
    "PRICECAST_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
_counter = itertools.count()
_created_pg_databases: list[str] = []


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own PRICECAST_HOME and an embedded MLflow store inside it."""
    home = tmp_path / "pricecast-home"
    home.mkdir()
    monkeypatch.setenv("PRICECAST_HOME", str(home))
    monkeypatch.delenv("PRICECAST_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pricecast.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_admin_engine():
    """An engine on the Postgres maintenance database; fails under CI, skips elsewhere, if down."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.orig}"
        if IN_CI:
            pytest.fail(message + " (CI=true: Postgres tests must run)")
        pytest.skip(message)
    yield engine
    with engine.connect() as conn:
        for name in _created_pg_databases:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _new_pg_database(admin) -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"pc_test_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    _created_pg_databases.append(name)
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_admin_engine) -> str:
    """URL of a fresh, empty Postgres database for this test."""
    return _new_pg_database(pg_admin_engine)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend: a SQLite file, then real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield _new_pg_database(request.getfixturevalue("pg_admin_engine"))


_skipped_postgres: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "postgres" in report.keywords:
        _skipped_postgres.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped Postgres test is a failure, never a silent skip."""
    if IN_CI and _skipped_postgres:
        print(f"\nCI: {len(_skipped_postgres)} Postgres test(s) were skipped:")
        for nodeid in _skipped_postgres[:20]:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------ a real Prefect server

PREFECT_SERVER_START_TIMEOUT = 180.0


class PrefectServer:
    """One real `prefect server start` (UI on) on `port`, with its own PREFECT_HOME and SQLite
    file under `home`, so nothing touches the user's Prefect state; stopped and started again on
    the same port and database by the tests of a server that goes away."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}/api"  # the UI is at the same URL without /api
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> str:
        import httpx

        from flows.prefect_api import prefect_server_tuning

        database = f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # The UI learns the API's address from these settings, not from --port.
            "PREFECT_UI_API_URL": self.url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            **prefect_server_tuning(os.environ),  # as `make up` runs it
        }
        self.starts += 1
        log_path = self.home / f"server-{self.starts}.log"
        with log_path.open("wb") as log:
            self.process = process = subprocess.Popen(
                [str(Path(sys.executable).parent / "prefect"), "server", "start",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + PREFECT_SERVER_START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"prefect server on port {self.port} did not start (exit code "
                    f"{process.poll()}); its log:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(1.0)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_group(process)


T = TypeVar("T")


def stop_group(process: subprocess.Popen[bytes], *, grace: float = 30.0) -> None:
    """Stop a process started with `start_new_session=True` and its group as a supervisor does:
    SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class _RetryUnavailable(httpx.HTTPTransport):
    """Retries a 503 a few times, as Prefect's own client does: a Prefect server on SQLite
    answers 503 while its database is busy (seen once in CI on the shared server, right after
    the worker tests' bursts of flow runs)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(5):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == 4:
                return response
            response.close()
            time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")


def prefect_api(url: str, timeout: float = 30) -> httpx.Client:
    """An HTTP client for a Prefect API that, like Prefect's client, retries a 503."""
    return httpx.Client(base_url=url, timeout=timeout, transport=_RetryUnavailable())


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> T:
    """`check()`'s first truthy value, asked every second; AssertionError after `timeout` or
    when `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited early with code {process.returncode}")
        time.sleep(1.0)
    raise AssertionError(f"{what}: not ready within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A started `PrefectServer` of this test's own, for tests that stop and start it again;
    stopped at the end."""
    server = PrefectServer(tmp_path / "prefect-server-of-its-own", free_port())
    server.home.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """API URL of one real Prefect server (`PrefectServer`) shared by the session's tests."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"), free_port())
    try:
        yield server.start()
    finally:
        server.stop()
