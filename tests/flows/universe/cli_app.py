"""The `pricecast` CLI with the universe commands registered, and `nightly-all` / `backfill-all`
standing in for `nightly --all` / `backfill --all`: the tests drive the real commands (also as
`python -m tests.flows.universe.cli_app`) whether or not `flows/cli` registers them yet."""

from __future__ import annotations

import typer

from flows.cli import app, main
from flows.cli import universe as cli_universe
from flows.cli.common import parse_day, parse_required_day

if not any(group.name == "universe" for group in app.registered_groups):
    cli_universe.register(app)


@app.command("nightly-all")
def nightly_all_command(
    as_of: str | None = typer.Option(None, "--as-of"),
    as_json: bool = typer.Option(False, "--json"),
    where: str = typer.Option("auto", "--where"),
    pool: str | None = typer.Option(None, "--pool"),
    force: bool = typer.Option(False, "--force"),
) -> None:
    cli_universe.nightly_all(
        as_of=parse_day(as_of, "--as-of"), as_json=as_json, where=where, pool=pool, force=force
    )


@app.command("backfill-all")
def backfill_all_command(
    start: str = typer.Option(..., "--start"),
    end: str = typer.Option(..., "--end"),
    every: str = typer.Option("day", "--every"),
    as_json: bool = typer.Option(False, "--json"),
    where: str = typer.Option("auto", "--where"),
) -> None:
    cli_universe.backfill_all(
        start=parse_required_day(start, "--start"),
        end=parse_required_day(end, "--end"),
        every=every,
        as_json=as_json,
        where=where,
    )


if __name__ == "__main__":
    main()
