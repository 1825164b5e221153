"""Settings: defaults under PRICECAST_HOME, URLs shown masked, Prefect's and MLflow's defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pricecast.settings import (
    ENVIRONMENT_DEFAULTS,
    PREFECT_DEFAULTS,
    Settings,
    apply_environment_defaults,
    get_settings,
)


def test_embedded_defaults_live_under_home(isolated_home: Path) -> None:
    settings = get_settings()
    assert settings.resolved_database_url == f"sqlite:///{isolated_home}/pricecast.db"
    assert settings.resolved_mlflow_uri == f"sqlite:///{isolated_home}/mlflow.db"
    assert settings.redacted_database_url == settings.resolved_database_url


def test_database_url_is_shown_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICECAST_DATABASE_URL", "postgresql+psycopg2://bob:hunter2@db:5432/p")
    settings = Settings()
    assert settings.resolved_database_url.endswith("bob:hunter2@db:5432/p")
    assert settings.redacted_database_url == "postgresql+psycopg2://bob:***@db:5432/p"


def test_environment_defaults_fill_gaps_and_never_override_the_user() -> None:
    (name, value), *_ = PREFECT_DEFAULTS.items()
    environ: dict[str, str] = {}
    apply_environment_defaults(environ)
    assert environ == ENVIRONMENT_DEFAULTS and int(value) >= 120
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    exported = {name: "600"}
    apply_environment_defaults(exported)
    assert exported[name] == "600"


def test_mlflow_sends_no_telemetry_from_a_process_with_our_defaults() -> None:
    """MLflow 3 turns its telemetry off in CI or under pytest by itself (PYTEST_CURRENT_TEST,
    CI, ...), and not for DO_NOT_TRACK=1: a child without those shows what a user's process
    does, with and without our defaults."""
    ci_markers = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in ci_markers} | {"DO_NOT_TRACK": "1"}
    code = (
        "import sys\n"
        "from pricecast.settings import apply_environment_defaults\n"
        "if sys.argv[1] == 'defaults': apply_environment_defaults()\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "print(is_telemetry_disabled())\n"
    )

    def disabled(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert disabled("bare") == "False"  # what the defaults are for: MLflow would send
    assert disabled("defaults") == "True"
