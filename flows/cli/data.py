"""CLI commands for data: `pricecast db upgrade`, `pricecast ingest`, `pricecast weeks`."""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

import typer

from flows.cli.common import DEFAULT_TICKER, open_engine, parse_day, print_json, stored_closes

db_app = typer.Typer(
    name="db",
    help="The database (PRICECAST_DATABASE_URL; default: SQLite under PRICECAST_HOME).",
    no_args_is_help=True,
)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations up to the newest (other commands do this on first use)."""
    from pricecast.settings import get_settings
    from storage.db import current_revision, upgrade

    with open_engine(migrate=False) as engine:
        upgrade(engine)
        revision = current_revision(engine)
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
        print_json(summary.to_dict())
    else:
        for line in summary.lines():
            typer.echo(line)


class WeekRow(TypedDict):
    week_start: str
    iso_week: str
    days: int
    complete: bool
    #: Monday..Sunday; None for a missing day.
    closes: list[float | None]


class WeeksReport(TypedDict):
    """`pricecast weeks --json` (with `ticker` in front)."""

    as_of: str
    first_date: str | None
    last_date: str | None
    days: int
    complete_weeks: int
    incomplete_weeks: int
    missing_days: int
    missing_dates: list[str]
    last_weeks: list[WeekRow]


def weeks_report(closes: list[tuple[dt.date, float]], *, as_of: dt.date, last: int) -> WeeksReport:
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
    from forecasting.calendar import today_utc

    day = parse_day(as_of, "--as-of") or today_utc()
    report = weeks_report(stored_closes(ticker, day), as_of=day, last=last)
    if as_json:
        print_json({"ticker": ticker, **report})
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
