"""Serve the nightly flow as Prefect deployments on a cron schedule, one per ticker.

The deployments appear in the Prefect UI with their schedule; this process picks up their runs
(scheduled, or started from the UI/API) and executes each in a subprocess of its own.

While it serves, a watch asks the API's /health now and then and says in one line when the API
stops answering (no run is picked up meanwhile; Prefect's runner keeps trying) and when it is
back. On Ctrl-C or SIGTERM it pauses the schedules itself: with one quick health check first, so
a server that is gone means an immediate, clear error instead of a minute of retries. A SIGTERM
that comes while the deployments are still being registered is held until Prefect's runner
serves them, then stops it the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from flows.prefect_api import api_problem, prefect_api_url
from pricecast.errors import ConfigError, ServiceUnavailable
from pricecast.urls import mask_url

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"


def deployment_name(ticker: str) -> str:
    """`nightly-BTC-USD`: the flow is `nightly`, so the UI shows `nightly/nightly-BTC-USD`."""
    return f"nightly-{ticker}"


def check_prefect_api(url: str | None, *, timeout: float = 10.0) -> str:
    """The API URL if a Prefect server answers there; otherwise a clear, actionable error."""
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: a served schedule needs a Prefect server that keeps it. "
            "Start one (`make up`, or `prefect server start`) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    problem = api_problem(url, timeout=timeout)
    if problem:
        raise ServiceUnavailable(
            f"the Prefect API at {url} is not answering ({problem}); "
            "start it with `make up` (or `prefect server start`) or fix PREFECT_API_URL"
        )
    return url


def _say(message: str) -> None:
    print(f"pricecast serve: {message}", file=sys.stderr, flush=True)


class ApiWatch:
    """A daemon thread that checks the API's /health every `every` seconds and says, once each,
    when it stops answering and when it answers again."""

    def __init__(
        self, url: str, *, every: float, say: Callable[[str], None] = _say, timeout: float = 5.0
    ) -> None:
        self.url, self.every, self.say, self.timeout = url, every, say, timeout
        self.shown = mask_url(url)
        self.down = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pricecast-api-watch", daemon=True)

    def __enter__(self) -> ApiWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            problem = api_problem(self.url, timeout=self.timeout)
            if problem and not self.down:
                self.say(
                    f"the Prefect API at {self.shown} stopped answering ({problem}); no run is "
                    "picked up until it is back, and serving goes on trying. Start it again "
                    "(`make up`, or `prefect server start`)."
                )
            elif not problem and self.down:
                self.say(
                    f"the Prefect API at {self.shown} answers again; serving goes on. (Prefect "
                    "stops watching for cancellations after an outage: restart serve to cancel "
                    "runs from the UI.)"
                )
            self.down = problem is not None


@contextlib.contextmanager
def sigterm_deferred_until_serving(poll_seconds: float = 0.05) -> Iterator[None]:
    """A SIGTERM that comes while Prefect registers the deployments (before its runner takes
    SIGTERM over, in `Runner.start`) is held, and sent again once the runner serves, so the stop
    pauses schedules that are surely registered. Without this it killed serve outright in that
    window (exit -15) and left the schedules on. Only from the main thread (signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if not held:
            what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"  # see sigint_as_sigterm
            _say(f"{what} while the deployments are being registered: stopping once they are.")
        held.append(signum)

    previous = signal.signal(signal.SIGTERM, hold)
    done = threading.Event()

    def resend_once_serving() -> None:
        while not done.wait(poll_seconds):
            if signal.getsignal(signal.SIGTERM) is not hold:  # Prefect's runner took it over
                if held:
                    os.kill(os.getpid(), signal.SIGTERM)
                return

    watcher = threading.Thread(target=resend_once_serving, name="pricecast-serve-sigterm")
    watcher.daemon = True
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigint_as_sigterm() -> Iterator[None]:
    """Ctrl-C stops serve the way SIGTERM does (Prefect's runner stops polling and exits 0; held
    while the deployments are being registered). Left to asyncio, a first Ctrl-C only cancels
    the runner's main task, and right after a server outage that cancellation was swallowed:
    serve went on serving (twice, in full CI runs of `tests/flows/test_serve.py`). Only from the
    main thread (signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigterm(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):  # nobody took SIGTERM over: Ctrl-C as usual
            raise KeyboardInterrupt
        handler(signum, frame)  # SIGINT: the hold says "Ctrl-C"; Prefect's ignores the number

    previous = signal.signal(signal.SIGINT, as_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def pause_schedules(url: str, names: Sequence[str], *, timeout: float = 5.0) -> None:
    """Pause the served deployments' schedules (`flow/deployment` names), so the server does not
    schedule runs that nothing executes; ServiceUnavailable at once if the API is gone."""
    listed, shown = ", ".join(names), mask_url(url)
    still_on = (
        f"so the schedule of {listed} is still on: once the server answers it schedules runs "
        "that nothing executes (they turn Late). Then serve again (Ctrl-C pauses it) or pause it "
        "in the Prefect UI (Deployments)."
    )
    problem = api_problem(url, timeout=timeout)
    if problem:
        raise ServiceUnavailable(
            f"stopped serving, but the Prefect API at {shown} is not answering ({problem}), "
            + still_on
        )
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            for name in names:
                client.pause_deployment(client.read_deployment_by_name(name).id)
    except Exception as exc:  # the server went away in between, or refused
        raise ServiceUnavailable(
            f"stopped serving, but pausing at the Prefect API at {shown} failed "
            f"({type(exc).__name__}: {exc}), " + still_on
        ) from exc
    _say(f"stopped; paused the schedule of {listed} (`pricecast serve` again resumes it).")


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


def warn_slow_mlflow() -> None:
    """On stderr, when the MLflow server is slow on kept-alive connections (`flows.tracking.
    keepalive`): what a long-running command that logs every night should say before it starts."""
    from flows.tracking.keepalive import slow_keepalive_warning
    from pricecast.settings import get_settings

    warning = slow_keepalive_warning(get_settings().resolved_mlflow_uri)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


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
    url = check_prefect_api(prefect_api_url())
    warn_slow_mlflow()
    deployments = build_deployments(
        tickers, source=source, cron=cron, timezone=timezone, parameters=parameters
    )
    from prefect import serve

    from pricecast.settings import get_settings

    with (
        ApiWatch(url, every=get_settings().serve_health_seconds),
        sigterm_deferred_until_serving(),
        sigint_as_sigterm(),
    ):
        # On SIGTERM (and Ctrl-C, made one) Prefect's runner exits with code 0. Prefect's own pause
        # on shutdown retries for about a minute when the server is gone; pause_schedules checks
        # first.
        try:
            serve(*deployments, limit=limit, pause_on_shutdown=False)
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
    pause_schedules(url, [f"nightly/{d.name}" for d in deployments])
