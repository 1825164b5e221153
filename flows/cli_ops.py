"""CLI for operations: `serve` the nightly schedule, `backfill` history, run the `demo`."""

from __future__ import annotations

import datetime as dt

import typer

from pricecast.errors import DataError

TICKER_HELP = "Ticker symbol, e.g. BTC-USD."
SOURCE_HELP = "Price source: synthetic, http, or csv:PATH (a Yahoo/CoinMarketCap/exchange export)."


def parse_date(value: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise DataError(f"{option} {value!r} is not a date; use YYYY-MM-DD") from None


def serve(
    ticker: list[str] = typer.Option(
        ..., "--ticker", help=TICKER_HELP + " Repeat for several (one deployment each)."
    ),
    source: str = typer.Option(..., "--source", help=SOURCE_HELP),
    cron: str = typer.Option("0 2 * * *", "--cron", help="When the nightly runs (cron syntax)."),
    timezone: str = typer.Option("UTC", "--timezone", help="Timezone of the cron schedule."),
    limit: int = typer.Option(
        1, "--limit", min=1, help="Nightly runs executed at once (each training needs ~1 GB)."
    ),
) -> None:
    """Serve the nightly deployment(s) on a cron schedule against PREFECT_API_URL.

    Each ticker appears in the Prefect UI as deployment nightly/nightly-<TICKER> with its
    schedule. Runs started from the UI or the API (e.g. with parameters {"as_of": "2017-11-12"})
    are picked up too. Stop with Ctrl-C (the schedules are paused until you serve again).
    """
    from flows.serve import serve_nightly

    serve_nightly(ticker, source=source, cron=cron, timezone=timezone, limit=limit)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `pricecast` app."""
    app.command("serve")(serve)
