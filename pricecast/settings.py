"""The one place that reads the environment: typed settings for every layer.

`forecasting/` and `storage/` never read it; `flows/` passes values down as arguments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRICECAST_", extra="ignore")

    home: Path = Field(default=Path(".pricecast"), description="State folder (PRICECAST_HOME).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file under PRICECAST_HOME."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "PRICECAST_MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI; default: SQLite store under PRICECAST_HOME.",
    )
    http_base_url: str = Field(
        default="https://api.binance.com", description="Base URL of the daily-candles HTTP API."
    )
    http_timeout_seconds: float = 10.0
    http_retries: int = 4
    http_backoff_seconds: float = 1.0
    http_symbols: dict[str, str] = Field(
        default_factory=dict,
        description='Ticker -> API symbol overrides, JSON: {"BTC-USD": "BTCUSDC"}.',
    )

    window_weeks: int = 40
    holdout_weeks: int = 19
    epochs: int = 100
    seed: int = 0
    promotion_margin: float = Field(
        default=0.0, description="MAPE points a candidate must beat champion and naive by."
    )
    lock_timeout_seconds: float = 600.0
    # Training runs in a child process that is reused for up to N jobs (a backfill saves the
    # TensorFlow import each night) and exits after being idle; 1 = a fresh process per job.
    training_worker_max_jobs: int = 20
    training_worker_idle_seconds: float = 300.0

    # Local services (`make up`): the Postgres to reuse if it runs, and the ports to bind on
    # 127.0.0.1. `services_db_prefix` namespaces the databases (tests use their own).
    pg_admin_url: str = Field(
        default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
        description="Maintenance database of a running Postgres to reuse (PRICECAST_PG_ADMIN_URL).",
    )
    pg_port: int = Field(default=5433, description="First port tried for a Postgres of our own.")
    mlflow_port: int = 5000
    prefect_port: int = 4200
    services_db_prefix: str = ""
    services_timeout_seconds: float = 180.0

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'pricecast.db'}"

    @property
    def redacted_database_url(self) -> str:
        """The database URL with any password masked, safe to print or log."""
        try:
            return make_url(self.resolved_database_url).render_as_string(hide_password=True)
        except Exception:  # a malformed URL: show nothing secret
            return "<unparseable database URL>"

    @property
    def resolved_mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolved_home / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        """Where runs store artifacts when the tracking store is the local default."""
        return self.resolved_home / "mlartifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
