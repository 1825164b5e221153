"""Which nights a backfill replays, and which it skips: pure date logic, exact."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.cli import main
from flows.schedule.backfill import BackfillSummary, NightOutcome, backfill_dates, pending_dates
from pricecast.errors import DataError

D = dt.date
TODAY = D(2024, 1, 31)


def test_every_day_includes_both_ends() -> None:
    dates = backfill_dates(D(2024, 1, 1), D(2024, 1, 10), "day", today=TODAY)
    assert dates[0] == D(2024, 1, 1) and dates[-1] == D(2024, 1, 10) and len(dates) == 10


def test_every_week_steps_seven_days_from_start() -> None:
    dates = backfill_dates(D(2024, 1, 7), D(2024, 1, 28), "week", today=TODAY)
    assert dates == [D(2024, 1, 7), D(2024, 1, 14), D(2024, 1, 21), D(2024, 1, 28)]
    # An end between two steps is not replayed.
    assert backfill_dates(D(2024, 1, 7), D(2024, 1, 20), "week", today=TODAY)[-1] == D(2024, 1, 14)


def test_single_night() -> None:
    assert backfill_dates(D(2024, 1, 5), D(2024, 1, 5), today=TODAY) == [D(2024, 1, 5)]


@pytest.mark.parametrize(
    ("start", "end", "every", "message"),
    [
        (D(2024, 1, 10), D(2024, 1, 1), "day", "before --start"),
        (D(2024, 1, 1), D(2024, 1, 31), "day", "not over yet"),  # today has no final close
        (D(2024, 1, 1), D(2024, 1, 5), "month", "not one of day, week"),
    ],
)
def test_bad_ranges_are_data_errors(start, end, every, message) -> None:
    with pytest.raises(DataError, match=message):
        backfill_dates(start, end, every, today=TODAY)


def test_pending_keeps_order_and_skips_done_nights() -> None:
    dates = backfill_dates(D(2024, 1, 1), D(2024, 1, 6), today=TODAY)
    done = {D(2024, 1, 1), D(2024, 1, 2), D(2024, 1, 4)}
    # A rerun after a failure on the 3rd resumes there, then continues past the done 4th.
    assert pending_dates(dates, done) == [D(2024, 1, 3), D(2024, 1, 5), D(2024, 1, 6)]


def test_summary_json_counts() -> None:
    summary = BackfillSummary(
        ticker="X", start=D(2024, 1, 1), end=D(2024, 1, 3), every="day", nights=3, skipped_done=1
    )
    summary.replayed += [
        NightOutcome(D(2024, 1, 2), True, "fresh", 1, 3.0),
        NightOutcome(D(2024, 1, 3), False, None, 1, 1.0),
    ]
    payload = summary.to_json()
    assert (payload["nights"], payload["trained_nights"], payload["skipped_done"]) == (3, 1, 1)
    assert payload["replayed_nights"] == 2 and payload["replayed"][0]["as_of"] == "2024-01-02"


def test_cli_bad_date_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["backfill", "--source", "synthetic", "--start", "2024-13-01", "--end", "2024-01-02"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: --start '2024-13-01' is not a date: use YYYY-MM-DD, e.g. 2024-01-31"
