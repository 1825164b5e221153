"""CLI commands for data: `pricecast db upgrade`, `pricecast ingest`, `pricecast weeks`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import typer

from pricecast.errors import DataError

DEFAULT_TICKER = "BTC-USD"

db_app = typer.Typer(
    name="db",
    help="The database (PRICECAST_DATABASE_URL; default: SQLite under PRICECAST_HOME).",
    no_args_is_help=True,
)


def parse_day(value: str | None, option: str) -> dt.date | None:
    """'2024-01-31' -> date; None stays None. DataError naming the option otherwise."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise DataError(
            f"{option} {value!r} is not a date: use YYYY-MM-DD, e.g. 2024-01-31"
        ) from None


def _engine():  # type: ignore[no-untyped-def]
    from pricecast.settings import get_settings
    from storage.db import make_engine

    return make_engine(get_settings().resolved_database_url)


def stored_closes(ticker: str, as_of: dt.date) -> list[tuple[dt.date, float]]:
    """The ticker's stored daily closes up to `as_of`; DataError saying how to load some if none."""
    from storage.db import ensure_schema, session_scope
    from storage.prices import read_closes

    engine = _engine()
    try:
        ensure_schema(engine)
        with session_scope(engine) as session:
            closes = read_closes(session, ticker=ticker, as_of=as_of)
    finally:
        engine.dispose()
    if not closes:
        raise DataError(
            f"no prices stored for {ticker} up to {as_of}; load some first, e.g. "
            f"pricecast ingest --ticker {ticker} --source synthetic"
        )
    return closes


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations up to the newest (other commands do this on first use)."""
    from pricecast.settings import get_settings
    from storage.db import current_revision, upgrade

    engine = _engine()
    try:
        upgrade(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"database {get_settings().redacted_database_url} is at revision {revision} (head)")


def ingest_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t", help="Ticker to store under."),
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help=(
            "csv:PATH (a CSV file, columns found by header name), http (the daily-candles API "
            "at PRICECAST_HTTP_BASE_URL; http:URL for another base URL), or synthetic[:SEED]."
        ),
    ),
    start: str | None = typer.Option(None, "--start", help="First day to load (YYYY-MM-DD)."),
    end: str | None = typer.Option(None, "--end", help="Last day to load (YYYY-MM-DD)."),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="Load only rows up to this day (backfill uses it); without it, a row dated after "
        "today is an error.",
    ),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Load the valid rows and record invalid ones in rejected_rows, instead of "
        "refusing the whole source.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate prices from a source and upsert them by (ticker, date), in one transaction.

    Re-ingesting the same data changes nothing; changed values update the row and keep the old
    ones in price_revisions. By default any invalid row refuses the whole source (each problem
    printed with its file and line, nothing written).
    """
    from flows.ingest.load import ingest
    from flows.ingest.sources import parse_source
    from pricecast.settings import get_settings

    settings = get_settings()
    summary = ingest(
        database_url=settings.resolved_database_url,
        ticker=ticker,
        source=parse_source(source, settings),
        start=parse_day(start, "--start"),
        end=parse_day(end, "--end"),
        as_of=parse_day(as_of, "--as-of"),
        skip_invalid=skip_invalid,
    )
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        for line in summary.lines():
            typer.echo(line)


def weeks_report(
    closes: list[tuple[dt.date, float]], *, as_of: dt.date, last: int
) -> dict[str, Any]:
    """Counts of complete and incomplete ISO weeks, missing days, and the last `last` weeks."""
    import pandas as pd

    from forecasting.weeks import (
        CLOSE,
        COMPLETE,
        DATE,
        DAY_COLUMNS,
        ISO_WEEK,
        ISO_YEAR,
        N_DAYS,
        group_iso_weeks,
        missing_days,
    )

    daily = pd.DataFrame(closes, columns=[DATE, CLOSE])
    weeks = group_iso_weeks(daily, as_of=as_of)
    missing = missing_days(daily, as_of=as_of) if len(daily) else []
    complete = int(weeks[COMPLETE].sum())
    return {
        "as_of": as_of.isoformat(),
        "first_date": closes[0][0].isoformat() if closes else None,
        "last_date": closes[-1][0].isoformat() if closes else None,
        "days": len(closes),
        "complete_weeks": complete,
        "incomplete_weeks": len(weeks) - complete,
        "missing_days": len(missing),
        "missing_dates": [d.isoformat() for d in missing],
        "last_weeks": [
            {
                "week_start": start.date().isoformat(),
                "iso_week": f"{int(row[ISO_YEAR])}-W{int(row[ISO_WEEK]):02d}",
                "days": int(row[N_DAYS]),
                "complete": bool(row[COMPLETE]),
                "closes": [None if pd.isna(row[c]) else float(row[c]) for c in DAY_COLUMNS],
            }
            for start, row in weeks.tail(last).iterrows()
        ],
    }


def weeks_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t", help="Ticker to group."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="See only prices up to this day (YYYY-MM-DD; default: today UTC)."
    ),
    last: int = typer.Option(5, "--last", min=0, help="How many of the latest weeks to show."),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON object (complete_weeks, incomplete_weeks, ...)."
    ),
) -> None:
    """Group stored daily closes into ISO weeks (Monday..Sunday) as of a day.

    Only complete weeks (seven closes) can train or score a model; the week in progress and
    weeks with a missing day cannot.
    """
    from flows.ingest.load import today_utc

    day = parse_day(as_of, "--as-of") or today_utc()
    closes = stored_closes(ticker, day)
    report = {"ticker": ticker, **weeks_report(closes, as_of=day, last=last)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(
        f"{ticker} as of {day}: {report['days']} days from {report['first_date']} to "
        f"{report['last_date']}"
    )
    typer.echo(
        f"complete weeks: {report['complete_weeks']}, incomplete weeks: "
        f"{report['incomplete_weeks']}, missing days: {report['missing_days']}"
        + (f" (first: {', '.join(report['missing_dates'][:5])})" if report["missing_days"] else "")
    )
    if report["last_weeks"]:
        typer.echo("last weeks (Mon..Sun closes, - = missing):")
    for week in report["last_weeks"]:
        closes_text = " ".join("-" if c is None else f"{c:.2f}" for c in week["closes"])
        state = "complete" if week["complete"] else f"{week['days']}/7 days"
        typer.echo(f"  {week['iso_week']} ({week['week_start']}) {state:>9}: {closes_text}")


def register(app: typer.Typer) -> None:
    """Add `db upgrade`, `ingest` and `weeks` to the `pricecast` app."""
    app.add_typer(db_app)
    app.command("ingest")(ingest_command)
    app.command("weeks")(weeks_command)
