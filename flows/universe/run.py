"""What `pricecast nightly --all` and `pricecast backfill --all` call: the universe flows run from
this process (which fan out to the work pool when one is deployed), returning every ticker's
outcome whether or not some failed; the caller exits non-zero when `failed` is not 0."""

from __future__ import annotations

import datetime as dt

from flows.prefect_api import prefect_api_lost
from flows.universe.report import UniverseBackfill, UniverseResult
from pricecast.settings import apply_environment_defaults

#: What a lost Prefect server means for the batch runs of a universe night.
WORKERS_NOTE = (
    "The batch runs already submitted stay with the workers: a running one may finish or fail, "
    "one not yet started runs once a worker can take it. "
)


def run_universe(
    *,
    as_of: dt.date | None = None,
    tickers: list[str] | None = None,
    where: str = "auto",
    pool: str | None = None,
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    window_weeks: int | None = None,
) -> UniverseResult:
    """One `nightly-universe` flow run as of `as_of` (default: yesterday, UTC); see the flow."""
    apply_environment_defaults()
    from flows.universe.flow import UniverseFailed, nightly_universe
    from forecasting.calendar import yesterday_utc

    as_of = as_of or yesterday_utc()  # fixed here: the rerun the error names is this night
    try:
        with prefect_api_lost(
            "the universe night", f"pricecast nightly --all --as-of {as_of}", note=WORKERS_NOTE
        ):
            return nightly_universe(
                as_of=as_of,
                tickers=tickers,
                where=where,
                pool=pool,
                holdout_weeks=holdout_weeks,
                strategies=strategies,
                epochs=epochs,
                seed=seed,
                force=force,
                window_weeks=window_weeks,
            )
    except UniverseFailed as failed:
        assert isinstance(failed.result, UniverseResult)
        return failed.result


def backfill_universe(
    *,
    start: dt.date,
    end: dt.date,
    every: str = "day",
    tickers: list[str] | None = None,
    where: str = "auto",
    pool: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
) -> UniverseBackfill:
    """Replay the universe as of each date in [start, end] (every day or week, the single-ticker
    backfill's dates and rules); see `backfill-universe`."""
    apply_environment_defaults()
    from flows.schedule.backfill import backfill_dates
    from flows.universe.flow import UniverseFailed, backfill_universe_flow

    dates = backfill_dates(start, end, every)
    rerun = f"pricecast backfill --all --start {start} --end {end} --every {every}"
    try:
        with prefect_api_lost("the universe backfill", rerun, note=WORKERS_NOTE):
            return backfill_universe_flow(
                dates=dates,
                every=every,
                tickers=tickers,
                where=where,
                pool=pool,
                seed=0 if seed is None else seed,  # the single-ticker backfill's default too
                epochs=epochs,
            )
    except UniverseFailed as failed:
        assert isinstance(failed.result, UniverseBackfill)
        return failed.result
