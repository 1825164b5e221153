"""A throwaway PostgreSQL cluster of the faults' own: restarting or stopping it disturbs nothing
else (the shared server on :5432 is never touched).

Built with infra/services.py (`start_own_postgres` / `stop_own_postgres`, the same code `make up`
uses). The cluster lives in a folder outside pytest's tmp tree: as root, Postgres runs as the
`postgres` account, which cannot enter root's private tmp folders.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
FIRST_PORT = 5460  # above `make up`'s 5433, so a developer's own cluster keeps its port
START_TIMEOUT_SECONDS = 120.0


def load_services() -> ModuleType:
    """infra/services.py (a script, not a package) as a module."""
    name = "pricecast_services"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "infra/services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


class ThrowawayPostgres:
    """One cluster on 127.0.0.1:`port` that tests may stop, restart and fill with databases."""

    def __init__(self, services: ModuleType, root: Path) -> None:
        from pricecast.settings import Settings

        self._services = services
        self._settings_type = Settings
        self.layout = services.Layout(root / "services")
        self.port = services.first_free_port(FIRST_PORT)
        self.admin_url = ""
        self.start()

    def start(self) -> None:
        """Start it (again) on the same port; its data survives."""
        settings = self._settings_type(pg_port=self.port)
        url = self._services.start_own_postgres(self.layout, settings, START_TIMEOUT_SECONDS)
        if make_url(url).port != self.port:
            self.stop()
            raise RuntimeError(f"the throwaway Postgres came back on {url}, not port {self.port}")
        self.admin_url = url

    def stop(self) -> None:
        """A fast shutdown: every session is ended, as in a crash or a restart."""
        self._services.stop_own_postgres(self.layout)

    def restart(self, *, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def running(self) -> bool:
        return self._services.postgres_reachable(self.admin_url) is None

    def new_database(self) -> str:
        """URL of a fresh, empty database on this cluster."""
        name = f"fault_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A cluster of our own for the session (initdb once, about 3 s); removed at the end."""
    services = load_services()
    try:
        services.find_pg_binary("initdb")
    except Exception as exc:  # noqa: BLE001 - no server binaries on this machine
        if IN_CI:
            pytest.fail(f"CI=true: the fault tests need the PostgreSQL server binaries ({exc})")
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="pricecast-faults-pg-"))
    root.chmod(0o755)
    cluster: ThrowawayPostgres | None = None
    try:
        cluster = ThrowawayPostgres(services, root)
        yield cluster
    finally:
        if cluster is not None and (cluster.layout.pg_data / "postmaster.pid").exists():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fault_pg_url(throwaway_pg: ThrowawayPostgres) -> str:
    """A fresh database on the throwaway cluster, which is running when the test starts."""
    if not (throwaway_pg.layout.pg_data / "postmaster.pid").exists():
        throwaway_pg.start()  # an earlier test stopped it and failed before starting it again
    return throwaway_pg.new_database()
