"""Serve the nightly flow as Prefect deployments on a cron schedule, one per ticker.

The deployments appear in the Prefect UI with their schedule; this process picks up their runs
(scheduled, or started from the UI/API) and executes each in a subprocess of its own.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from pricecast.errors import ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"


def deployment_name(ticker: str) -> str:
    """`nightly-BTC-USD`: the flow is `nightly`, so the UI shows `nightly/nightly-BTC-USD`."""
    return f"nightly-{ticker}"


def prefect_api_url() -> str | None:
    """PREFECT_API_URL as Prefect itself resolves it (environment or active profile)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_prefect_api(url: str | None, *, timeout: float = 10.0) -> str:
    """The API URL if a Prefect server answers there; otherwise a clear, actionable error."""
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: a served schedule needs a Prefect server that keeps it. "
            "Start one (`make up`, or `prefect server start`) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    import httpx

    health = url.rstrip("/") + "/health"
    try:
        response = httpx.get(health, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"the Prefect API at {url} is not answering ({type(exc).__name__}: {exc}); "
            "start it with `make up` (or `prefect server start`) or fix PREFECT_API_URL"
        ) from exc
    return url


def validate_schedule(cron: str, timezone: str) -> None:
    from prefect.schedules import Cron

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown timezone {timezone!r}; use an IANA name such as UTC or Europe/Paris"
        ) from exc
    try:
        Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(
            f"invalid cron expression {cron!r} ({exc}); five fields, e.g. '0 2 * * *' for 02:00"
        ) from exc


def build_deployments(
    tickers: Sequence[str],
    *,
    source: str,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    parameters: dict[str, Any] | None = None,
) -> list[RunnerDeployment]:
    """One nightly deployment per ticker, with its cron schedule and default parameters."""
    if not tickers:
        raise ConfigError("give at least one --ticker to serve")
    duplicates = sorted({t for t in tickers if list(tickers).count(t) > 1})
    if duplicates:
        raise ConfigError(f"ticker(s) given twice: {', '.join(duplicates)}")
    validate_schedule(cron, timezone)
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.night.flow import nightly

    # to_deployment is typed sync-or-async; called from sync code it returns the deployment.
    return [
        cast(
            "RunnerDeployment",
            nightly.to_deployment(
                name=deployment_name(ticker),
                schedules=[Cron(cron, timezone=timezone)],
                parameters={"ticker": ticker, "source": source, **(parameters or {})},
                description=f"Nightly retrain/score/promote/forecast for {ticker} from {source}.",
                tags=["pricecast", ticker],
                # The package is installed, so the module path works from any directory.
                entrypoint_type=EntrypointType.MODULE_PATH,
            ),
        )
        for ticker in tickers
    ]


def serve_nightly(
    tickers: Sequence[str],
    *,
    source: str,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    limit: int | None = 1,
    parameters: dict[str, Any] | None = None,
) -> None:
    """Register the deployments with the Prefect API and execute their runs until interrupted.

    `limit` caps concurrent runs: each trained night takes about 1 GB in its training process.
    """
    check_prefect_api(prefect_api_url())
    deployments = build_deployments(
        tickers, source=source, cron=cron, timezone=timezone, parameters=parameters
    )
    from prefect import serve

    serve(*deployments, limit=limit)
