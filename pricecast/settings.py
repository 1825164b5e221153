"""The one place that reads the environment: typed settings for every layer.

`forecasting/` and `storage/` never read it; `flows/` passes values down as arguments.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pricecast.urls import mask_url

#: Prefect's ephemeral API server (the embedded default) gets 20 s to boot; on a small, busy
#: machine it needs more. Prefect's own variable; a value the user exported wins.
PREFECT_DEFAULTS: dict[str, str] = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}

#: MLflow 3 sends usage telemetry (it first fetches a config from an outside host) from every
#: process that uses it, unless MLFLOW_DISABLE_TELEMETRY is true or DO_NOT_TRACK is "true": the
#: DO_NOT_TRACK=1 that turns Prefect's off is not enough for MLflow. pricecast sends nothing out.
MLFLOW_DEFAULTS: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "true"}

#: What `apply_environment_defaults` puts into the environment of pricecast's processes.
ENVIRONMENT_DEFAULTS: dict[str, str] = {**PREFECT_DEFAULTS, **MLFLOW_DEFAULTS}


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
    # Where a person's browser reaches the UIs, when that differs from the address pricecast
    # itself uses (docker compose: the containers talk to http://mlflow:5000, the host's browser
    # opens http://127.0.0.1:5000). Links in reports and MLflow tags are built from these.
    mlflow_public_url: str | None = Field(
        default=None, description="MLflow UI address for links (PRICECAST_MLFLOW_PUBLIC_URL)."
    )
    prefect_public_url: str | None = Field(
        default=None, description="Prefect UI address for links (PRICECAST_PREFECT_PUBLIC_URL)."
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
    # Ingest refuses a close more than this fraction away from the day before's (a cut or
    # mistyped value). The book's BTC file (2013-04-28..2017-11-07) moves at most +43.0% up
    # (2013-11-18) and -23.4% down (2013-12-18); a value cut by one digit moves -90%.
    max_daily_move: float = Field(
        default=0.75,
        gt=0,
        description="Largest day-over-day close move ingest accepts, as a fraction (0.75 = 75%).",
    )

    window_weeks: int = 40
    holdout_weeks: int = 19
    epochs: int = 100
    seed: int = 0
    promotion_margin: float = Field(
        default=0.0, description="MAPE points a candidate must beat champion and naive by."
    )
    promotion_max_pvalue: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Largest one-sided Diebold-Mariano p-value (candidate vs champion and vs naive on "
            "the held-out weeks' MAPE) a promotion accepts; unset: p-values are only reported."
        ),
    )
    lock_timeout_seconds: float = 600.0
    # Training runs in a child process that is reused for up to N jobs (a backfill saves the
    # TensorFlow import each night) and exits after being idle; 1 = a fresh process per job.
    training_worker_max_jobs: int = 20
    training_worker_idle_seconds: float = 300.0
    training_threads: int = Field(
        default=1,
        ge=0,
        description=(
            "Threads TensorFlow's op pools use in the training process (PRICECAST_TRAINING_THREADS)"
            "; 0: TensorFlow's own choice (one per core). The weekly LSTM is too small to gain "
            "from more than one, and a second thread only contends with the flow, the services "
            "and other workers' trainings for the cores."
        ),
    )

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

    # The universe (`nightly --all`, `pricecast deploy`, `pricecast worker`). Tickers whose nights
    # run at once in one process: their trainings take turns in its one training process, so a
    # second night's ingest and promotion overlap the first's training (1 on SQLite).
    universe_parallel_nights: int = Field(default=2, ge=1)
    # Batch runs a universe night gives each online worker of the pool: match the workers'
    # --limit (each run trains in a process of its own, ~1 GB).
    universe_runs_per_worker: int = Field(default=1, ge=1)
    universe_wait_timeout_seconds: float = Field(default=6 * 3600.0, gt=0)
    # How often a universe night reads its batch runs' states (one request for all of them),
    # besides the moment Prefect's event stream says one changed (flows/universe/wakeup.py).
    universe_poll_seconds: float = Field(default=1.0, gt=0)
    worker_pool: str = Field(default="pricecast", description="Work pool of deploy and worker.")
    # How often a worker asks for runs (Prefect's PREFECT_WORKER_QUERY_SECONDS, default 10 s,
    # wins when set), one request every 2 s per worker to the server. It also asks the moment
    # Prefect's event stream says a run was scheduled in its pool (flows/universe/wakeup.py);
    # this poll is the fallback when the stream is down.
    worker_query_seconds: float = Field(default=2.0, gt=0)
    # How often `pricecast serve` checks that the Prefect API answers (it says when it stops).
    serve_health_seconds: float = Field(default=15.0, gt=0)
    training_resident: bool = Field(
        default=True,
        description=(
            "`pricecast worker` keeps one training process alive across its flow runs "
            "(PRICECAST_TRAINING_RESIDENT; ~1 GB while idle), so a batch run does not pay "
            "TensorFlow's import; false: each flow run starts its own."
        ),
    )
    worker_ready_engine: bool = Field(
        default=True,
        description=(
            "`pricecast worker` keeps one flow-run process started ahead of time while it runs "
            "nothing (PRICECAST_WORKER_READY_ENGINE; ~230 MB while idle), so a batch run does not "
            "wait ~1.5 s for Prefect's and our imports; false: each flow run starts its own."
        ),
    )

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
        return mask_url(self.resolved_database_url)

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


def apply_environment_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Put ENVIRONMENT_DEFAULTS (Prefect's and MLflow's) into the environment unless already set
    there.

    Prefect and MLflow read these when they are imported, so this must run before `import
    prefect` or `import mlflow` (the CLI calls it first thing); child processes inherit them.
    """
    target = os.environ if environ is None else environ
    for name, value in ENVIRONMENT_DEFAULTS.items():
        target.setdefault(name, value)
