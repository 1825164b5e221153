"""The Prefect API as every command sees it: its URL as Prefect resolves it, whether it answers,
and a lost server told in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from pricecast.errors import ServiceUnavailable

# The Prefect server settings pricecast starts its servers with (`make up`, the tests' server;
# infra/docker-compose.yml repeats them), on top of no analytics. Prefect's task-run recorder
# writes the task runs its clients report as events; by default it writes each event in its own
# transaction (batch size 1), which was ~30 % of the server's CPU in a universe night
# (bench/universe.py). 50 at a time, and at least every second: a task run's state reaches the
# UI at most a second late, and the server spends 0.48 instead of 0.68 CPU-s per ticker. A
# variable the user set wins.
PREFECT_SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


def prefect_server_tuning(environ: Mapping[str, str]) -> dict[str, str]:
    """PREFECT_SERVER_TUNING, each unless `environ` sets it already."""
    return {name: environ.get(name, value) for name, value in PREFECT_SERVER_TUNING.items()}


def prefect_api_url() -> str | None:
    """PREFECT_API_URL as Prefect itself resolves it (environment or active profile); None means
    Prefect's ephemeral in-process API."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def api_problem(url: str, *, timeout: float) -> str | None:
    """Why the Prefect API at `url` does not answer its /health ("ConnectError: ..."); None when
    it does."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def connection_failed(exc: BaseException) -> bool:
    """Whether `exc` is the connection to a server failing (refused, reset, timed out, or the
    server answering 5xx while it starts or stops), not an error in what was asked."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, (httpx.TransportError, ConnectionError))


@contextlib.contextmanager
def prefect_api_lost(
    what: str, rerun: str, *, note: str = "", rerun_does: str = "it skips the nights already done"
) -> Iterator[None]:
    """A connection error while the Prefect server does not answer (it went away during the run)
    is one line that names the server and the rerun, not `unexpected ConnectError`; so is one
    from a server that answers again by the time it is checked (it came back while Prefect's
    client was retrying)."""
    import httpx

    try:
        yield
    except (httpx.HTTPError, ConnectionError) as exc:
        from flows.universe.report import one_line
        from pricecast.urls import mask_url

        url = prefect_api_url()
        if url is None:  # in-process: no server to lose
            raise
        problem = api_problem(url, timeout=5.0)
        if problem is None:
            if not connection_failed(exc):
                raise  # the API answers and this was no outage: an error of its own
            raise ServiceUnavailable(
                f"lost the Prefect API at {mask_url(url)} during {what} ({one_line(exc)}); it "
                f"answers again now. {note}Rerun `{rerun}`: {rerun_does}"
            ) from exc
        raise ServiceUnavailable(
            f"lost the Prefect API at {mask_url(url)} during {what} ({problem}). {note}Once it "
            f"is back, rerun `{rerun}`: {rerun_does}"
        ) from exc
