"""`pricecast deploy` and `pricecast worker`: the process work pool, the two deployments on it
(`nightly-universe/<pool>` on a cron schedule, `nightly-batch/<pool>` that it fans out to), and a
Prefect worker for the pool started with pricecast's environment."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

from flows.prefect_api import prefect_api_url
from flows.schedule.serve import (
    DEFAULT_CRON,
    DEFAULT_TIMEZONE,
    check_prefect_api,
    validate_schedule,
    warn_slow_mlflow,
)
from flows.universe.fanout import ENGINE_COMMAND, batch_deployment, universe_deployment
from pricecast.errors import ConfigError
from pricecast.settings import Settings, apply_environment_defaults, get_settings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

POOL_TYPE = "process"


@dataclass
class Deployed:
    pool: str
    pool_created: bool
    pool_limit: int | None
    deployments: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ensure_pool(pool: str, *, limit: int | None = None) -> tuple[bool, int | None]:
    """Create the process work pool `pool` if missing (with `limit` runs at once, None: no
    limit); an existing one gets `limit` if one is given. Returns (created, its limit)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type=POOL_TYPE,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=limit,
                    description="pricecast: universe nights and their ticker batches",
                )
            )
            return True, limit
        if existing.type != POOL_TYPE:
            raise ConfigError(
                f"work pool {pool!r} exists with type {existing.type!r}, pricecast needs a "
                f"{POOL_TYPE} pool: choose another name with --pool"
            )
        if limit is not None and existing.concurrency_limit != limit:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
            return False, limit
        return False, existing.concurrency_limit


def build_deployments(
    pool: str, *, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE
) -> list[RunnerDeployment]:
    """The scheduled universe night and the batch deployment it fans out to, both on `pool`,
    with module-path entrypoints (the package is installed on every worker)."""
    validate_schedule(cron, timezone)
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.universe.batch import nightly_batch
    from flows.universe.flow import nightly_universe

    universe = nightly_universe.to_deployment(
        name=pool,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"where": "pool", "pool": pool},
        description=(
            f"Every enabled ticker's night, fanned out to pool {pool} as {batch_deployment(pool)} "
            "runs; tickers already done are skipped."
        ),
        tags=["pricecast", "universe"],
        work_pool_name=pool,
        job_variables={"command": ENGINE_COMMAND},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    batch = nightly_batch.to_deployment(
        name=pool,
        description="Several tickers' nights in one process (started by the universe night).",
        tags=["pricecast", "universe"],
        work_pool_name=pool,
        job_variables={"command": ENGINE_COMMAND},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # to_deployment is typed sync-or-async; called from sync code it returns the deployment.
    return [cast("RunnerDeployment", universe), cast("RunnerDeployment", batch)]


def deploy(
    *,
    pool: str,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    pool_limit: int | None = None,
) -> Deployed:
    """Create the pool if missing and register (or update) both deployments on it."""
    if pool_limit is not None and pool_limit < 1:
        raise ConfigError(f"--pool-limit must be >= 1, got {pool_limit}")
    url = check_prefect_api(prefect_api_url())
    deployments = build_deployments(pool, cron=cron, timezone=timezone)
    created, limit = ensure_pool(pool, limit=pool_limit)
    for deployment in deployments:
        deployment.apply(work_pool_name=pool)
    report = Deployed(pool, created, limit, [universe_deployment(pool), batch_deployment(pool)])
    report.notes.append(f"scheduled {universe_deployment(pool)} at '{cron}' ({timezone}) on {url}")
    report.notes.append(f"start workers with: pricecast worker --pool {pool} [--limit N]")
    return report


def worker_argv(pool: str, *, limit: int | None, name: str | None) -> list[str]:
    """Prefect's process worker for the pool, run by `flows.universe.pool_worker` on this
    interpreter (it outlives a Prefect server outage, which `prefect worker start` does not)."""
    argv = [sys.executable, "-m", "flows.universe.pool_worker", "--pool", pool]
    if limit is not None:
        argv += ["--limit", str(limit)]
    argv += ["--name", name or f"pricecast-{socket.gethostname()}-{os.getpid()}"]
    return argv


def worker_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment, which every flow run it starts inherits: this interpreter's
    folder first on PATH (ENGINE_COMMAND's `python` is then the one with pricecast installed),
    PRICECAST_HOME made absolute (a process worker runs each flow in a temporary folder), a
    shorter poll than Prefect's 10 s unless PREFECT_WORKER_QUERY_SECONDS is set, no telemetry."""
    env = dict(environ)
    interpreter = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != interpreter]
    env["PATH"] = os.pathsep.join([interpreter, *path])
    env["PRICECAST_HOME"] = str(settings.resolved_home)
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", f"{settings.worker_query_seconds:g}")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    apply_environment_defaults(env)  # MLflow's telemetry off, Prefect's start-up bound
    return env


def local_store_warnings(settings: Settings) -> list[str]:
    """What a worker on another machine would not see: SQLite files under PRICECAST_HOME."""
    warnings = []
    if settings.resolved_database_url.startswith("sqlite"):
        warnings.append(
            f"PRICECAST_DATABASE_URL is not set: runs on this worker use {settings.resolved_home}"
            "/pricecast.db, which only this machine sees; point every machine at one Postgres"
        )
    if settings.resolved_mlflow_uri.startswith("sqlite"):
        warnings.append(
            "MLFLOW_TRACKING_URI is not set: models go to a store only this machine sees; "
            "point every machine at one MLflow server (with --serve-artifacts)"
        )
    return warnings


def check_worker_pool(pool: str) -> None:
    """ConfigError when `pool` exists and is not a process pool: Prefect's process worker would
    only warn, then take its runs and start them the wrong way. A missing pool is fine (the
    worker creates it as a process pool; `pricecast deploy` adds the deployments)."""
    from flows.universe.fanout import pool_status

    try:
        status = pool_status(pool)
    except ConfigError:  # it does not exist yet
        return
    if status.type != POOL_TYPE:
        raise ConfigError(
            f"work pool {pool!r} is a {status.type!r} pool; pricecast worker runs a "
            f"{POOL_TYPE} pool: start it with the pool `pricecast deploy` made (--pool NAME, "
            f"default {get_settings().worker_pool!r})"
        )


def exec_worker(*, pool: str, limit: int | None, name: str | None = None) -> NoReturn:
    """Replace this process with a Prefect worker for `pool` (`flows.universe.pool_worker`;
    Ctrl-C stops it)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    settings = get_settings()
    check_prefect_api(prefect_api_url())
    check_worker_pool(pool)
    for warning in local_store_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    warn_slow_mlflow()
    argv = worker_argv(pool, limit=limit, name=name)
    env = worker_env(settings, os.environ)
    if settings.training_resident:
        env.update(start_resident_training(settings, env))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def resident_log(settings: Settings) -> Path:
    """Where the resident training processes of this PRICECAST_HOME's workers log (one line
    per process says when it is ready: `(worker <pid>): ready on ...`)."""
    from flows.training.resident import LOG_NAME

    return settings.resolved_home / "work" / LOG_NAME


def start_resident_training(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """Start this worker's resident training process (see `flows.training.resident`); the
    variables that lead its flow runs to it. This process becomes the Prefect worker, so its pid
    is the worker's."""
    from flows.training.resident import (
        OWNER_ENV,
        SOCKET_ENV,
        socket_path,
        start_resident,
    )

    owner = os.getpid()
    path = socket_path(owner)
    variables = {SOCKET_ENV: str(path), OWNER_ENV: str(owner)}
    log = resident_log(settings)
    try:
        pid = start_resident(
            path,
            owner=owner,
            log=log,
            max_jobs=settings.training_worker_max_jobs,
            idle_seconds=settings.training_worker_idle_seconds,
            environ={**env, **variables},
        )
    except OSError as exc:  # the worker still runs: each flow run trains in its own process
        print(f"warning: no resident training process ({exc}); each flow run of this worker "
              "starts its own", file=sys.stderr)  # fmt: skip
        return {}
    print(f"resident training process {pid} (TensorFlow imported once for every flow run of this "
          f"worker; PRICECAST_TRAINING_RESIDENT=false to turn off); its log: {log}")  # fmt: skip
    return variables
