"""Settings: defaults under PRICECAST_HOME, URLs shown masked, Prefect's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from pricecast.settings import PREFECT_DEFAULTS, Settings, apply_prefect_defaults, get_settings


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


def test_prefect_defaults_fill_gaps_and_never_override_the_user() -> None:
    (name, value), *_ = PREFECT_DEFAULTS.items()
    environ: dict[str, str] = {}
    apply_prefect_defaults(environ)
    assert environ == PREFECT_DEFAULTS and int(value) >= 120
    exported = {name: "600"}
    apply_prefect_defaults(exported)
    assert exported[name] == "600"
