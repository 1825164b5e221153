"""The Prefect API as every command sees it: its URL as Prefect resolves it, whether it answers,
and a lost server told in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pricecast.errors import ServiceUnavailable


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


@contextlib.contextmanager
def prefect_api_lost(
    what: str, rerun: str, *, note: str = "", rerun_does: str = "it skips the nights already done"
) -> Iterator[None]:
    """A connection error while the Prefect server does not answer (it went away during the run)
    is one line that names the server and the rerun, not `unexpected ConnectError`."""
    import httpx

    try:
        yield
    except (httpx.HTTPError, ConnectionError) as exc:
        from pricecast.urls import mask_url

        url = prefect_api_url()
        problem = api_problem(url, timeout=5.0) if url else None
        if url is None or problem is None:  # in-process, or the API answers: not an outage
            raise
        raise ServiceUnavailable(
            f"lost the Prefect API at {mask_url(url)} during {what} ({problem}). {note}Once it "
            f"is back, rerun `{rerun}`: {rerun_does}"
        ) from exc
