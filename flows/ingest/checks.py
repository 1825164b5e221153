"""Row checks of an ingest: raw cells parsed, every row that cannot be a day's prices named by
its line, the valid rows handed on once per day.

`RowChecker` is pure (no database): the loader gives it stored closes through a callback.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flows.ingest.sources import DATE, ERROR, LINE, RAW, VALUE_FIELDS, PriceSource
from storage.prices import PriceRow

if TYPE_CHECKING:
    from flows.ingest.load import IngestSummary

_HASH_MASK = (1 << 64) - 1
_ORDINAL_1970 = dt.date(1970, 1, 1).toordinal()
_BLANKS = frozenset({"", "null", "nan", "none", "n/a", "na", "-"})
_ISO_DAY = r"^\s*(\d{4}-\d{2}-\d{2})(?:[ T].*)?\s*$"
# The day-over-day check compares a close with the nearest accepted day at most this far back
# (a weekend or a holiday of a stock ticker); across a longer gap it does not apply.
MOVE_WINDOW_DAYS = 7
# The summary lists at most this many no-data days (the count is always complete).
MAX_LISTED_DAYS = 1000

#: (day) -> the stored (date, close) nearest before it within MOVE_WINDOW_DAYS, or None.
StoredClose = Callable[[dt.date], tuple[dt.date, float] | None]


@dataclass(frozen=True)
class Problem:
    """A refused row: where it is (for messages), its line, its raw text and why."""

    where: str
    line: int | None
    raw: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def parse_dates(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Raw date cells -> (datetime64[D] days, NaT where unparseable or blank; blank mask).

    Accepted: ISO dates with an optional time ("2021-02-26", "2021-02-26 23:59:59",
    "2021-02-26T00:00:00Z"; the calendar day as written), "Apr 28, 2013", and Unix epoch seconds
    or milliseconds. Slash dates like 01/02/2021 are refused: day and month are ambiguous.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_localize(None)
        days = values.to_numpy().astype("datetime64[D]")
        return days, np.isnat(days)
    text = values.astype("string").str.strip()
    blank = (text.isna() | (text == "")).fillna(True).to_numpy(dtype=bool)
    iso = text.str.extract(_ISO_DAY, expand=False)
    parsed = pd.to_datetime(iso, format="%Y-%m-%d", errors="coerce")
    rest = parsed.isna() & ~blank
    if rest.any():
        parsed[rest] = pd.to_datetime(text[rest], format="%b %d, %Y", errors="coerce")
        digits = rest & parsed.isna() & text.str.fullmatch(r"\d{10}|\d{13}").fillna(False)
        if digits.any():
            numbers = text[digits].astype("int64")
            seconds = np.where(numbers > 10**11, numbers // 1000, numbers)
            parsed[digits] = pd.to_datetime(seconds, unit="s")
    return parsed.to_numpy().astype("datetime64[D]"), blank


def parse_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw value cells -> (float64 with NaN for blank, blank mask, unparseable mask).

    Blank: empty, null, NaN, N/A, -. Numbers may use exponents (8.61E+11) and thousands
    separators (1,234.5).
    """
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype="float64")
        blank = np.isnan(numbers)
        return numbers, blank, np.zeros(len(numbers), dtype=bool)
    text = values.astype("string").str.strip()
    blank = (text.isna() | text.str.lower().isin(_BLANKS)).fillna(True).astype(bool)
    grouped = text.str.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?").fillna(False).astype(bool)
    if grouped.any():
        text = text.where(~grouped, text.str.replace(",", "", regex=False))
    numbers = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype="float64")
    blank_mask = blank.to_numpy(dtype=bool)
    return numbers, blank_mask, np.isnan(numbers) & ~blank_mask


def _cells(values: np.ndarray) -> list[float | None]:
    """Floats as Python objects, None where missing."""
    if np.isnan(values).any():
        return [None if math.isnan(v) else v for v in values.tolist()]
    return values.tolist()


# PriceRow from a tuple without a Python-level call per row (namedtuple._make is one).
_new_price_row = functools.partial(tuple.__new__, PriceRow)


def _fingerprints(columns: list[np.ndarray]) -> np.ndarray:
    """A 64-bit fingerprint per row of float columns (NaN = missing), vectorised (FNV-style)."""
    mixed = np.full(len(columns[0]), 0xCBF29CE484222325, dtype=np.uint64)
    for column in columns:
        # +0.0 folds -0.0 into 0.0; one NaN bit pattern for "missing".
        canonical = np.where(np.isnan(column), np.nan, column + 0.0)
        mixed = (mixed ^ canonical.view(np.uint64)) * np.uint64(0x100000001B3)
        mixed ^= mixed >> np.uint64(29)
    return mixed


@dataclass(frozen=True)
class _Reference:
    """An accepted close that a neighbouring day's close is compared with."""

    ordinal: int
    close: float
    stored: bool = False

    def describe(self) -> str:
        day = dt.date.fromordinal(self.ordinal)
        return f"the {'stored ' if self.stored else ''}close of {day} ({self.close:g})"


class RowChecker:
    """The row checks of one ingest, applied chunk by chunk; remembers days across chunks.

    `max_daily_move` (None: no check) refuses a close that moved more than that fraction from
    the nearest accepted day before it (within MOVE_WINDOW_DAYS); `stored_close` supplies the
    stored day before the first one read.
    """

    def __init__(
        self,
        source: PriceSource,
        *,
        start: dt.date | None,
        end: dt.date | None,
        as_of: dt.date | None,
        today: dt.date,
        summary: IngestSummary,
        max_daily_move: float | None = None,
        stored_close: StoredClose | None = None,
    ) -> None:
        self.source = source
        self.start = start
        self.end = end
        self.as_of = as_of
        self.today = today
        self.summary = summary
        self.max_daily_move = max_daily_move
        self._stored_close = stored_close
        # Spots the same day twice across the whole stream: day ordinal -> line << 64 | 64-bit
        # fingerprint of the values. Two small ints per distinct day (bounded by the calendar,
        # not by the size of the source); equal fingerprints count as identical values.
        self._seen: dict[int, int] = {}
        # Accepted closes by day ordinal, for the day-over-day check across chunks.
        self._closes: dict[int, float] = {}

    def check(self, frame: pd.DataFrame) -> tuple[list[PriceRow], list[Problem]]:
        """Valid, first-seen rows of a raw frame, and the problems of the others."""
        n = len(frame)
        self.summary.rows_read += n
        if n == 0:
            return [], []
        frame = frame.reset_index(drop=True)
        reasons: dict[int, str] = {}  # row -> first problem found

        def flag(mask: np.ndarray, reason: Any) -> None:
            for i in np.flatnonzero(mask).tolist():
                if i not in reasons:
                    reasons[i] = reason(i) if callable(reason) else reason

        def flagged() -> np.ndarray:
            mask = np.zeros(n, dtype=bool)
            mask[list(reasons)] = True
            return mask

        if ERROR in frame:
            errors = frame[ERROR].to_numpy(dtype=object)
            flag(pd.notna(errors), lambda i: str(errors[i]))
        day, date_blank = parse_dates(frame[DATE])
        flag(date_blank, "date is missing")
        raw_dates = frame[DATE].to_numpy(dtype=object)
        flag(
            np.isnat(day),
            lambda i: f"date {str(raw_dates[i]).strip()!r} is not a date (expected YYYY-MM-DD)",
        )
        values: dict[str, np.ndarray] = {}
        blanks: dict[str, np.ndarray] = {}
        for name in VALUE_FIELDS:
            values[name], blanks[name], bad = parse_numbers(frame[name])
            cells = frame[name].to_numpy(dtype=object)
            flag(
                bad,
                lambda i, name=name, cells=cells: (
                    f"{name} {str(cells[i]).strip()!r} is not a number"
                ),
            )
        # A dated row with no values at all is the source saying "no data that day" (Yahoo's
        # null rows): counted and reported, neither stored nor an error.
        no_data = np.logical_and.reduce([blanks[name] for name in VALUE_FIELDS]) & ~flagged()
        # Rows outside the asked range are not loaded (counted); after today they are wrong.
        outside = np.zeros(n, dtype=bool)
        for bound, later in ((self.start, False), (self.end, True), (self.as_of, True)):
            if bound is not None:
                limit = np.datetime64(bound, "D")
                outside |= (day > limit) if later else (day < limit)
        outside &= ~no_data & ~flagged()
        active = ~no_data & ~outside
        if self.as_of is None:
            flag(
                active & (day > np.datetime64(self.today, "D")),
                lambda i: f"date {day[i]} is after today ({self.today})",
            )
        self._check_values(active, values, blanks, flag)
        invalid = flagged()
        return self._collect(frame, day, values, reasons, invalid, no_data, outside & ~invalid)

    @staticmethod
    def _check_values(
        active: np.ndarray,
        values: dict[str, np.ndarray],
        blanks: dict[str, np.ndarray],
        flag: Callable[[np.ndarray, Any], None],
    ) -> None:
        """Each value on its own, then the day's values together (NaN = absent: not compared)."""
        open_, close, low, high = values["open"], values["close"], values["low"], values["high"]
        flag(active & blanks["close"], "close is missing")
        with np.errstate(invalid="ignore"):
            for name in VALUE_FIELDS:
                column = values[name]
                flag(
                    active & ~np.isfinite(column) & ~blanks[name],
                    lambda i, c=column, name=name: f"{name} {c[i]:g} is not finite",
                )
            flag(active & (close <= 0), lambda i: f"close must be > 0, got {close[i]:g}")
            for name in ("open", "high", "low", "volume", "market_cap"):
                column = values[name]
                flag(
                    active & (column < 0),
                    lambda i, c=column, name=name: f"{name} must be >= 0, got {c[i]:g}",
                )
            flag(active & (high < low), lambda i: f"high {high[i]:g} is below low {low[i]:g}")
            for name, column in (("open", open_), ("close", close)):
                flag(
                    active & (column < low),
                    lambda i, c=column, name=name: (
                        f"{name} {c[i]:g} is below the day's low {low[i]:g}"
                    ),
                )
                flag(
                    active & (column > high),
                    lambda i, c=column, name=name: (
                        f"{name} {c[i]:g} is above the day's high {high[i]:g}"
                    ),
                )

    def _collect(
        self,
        frame: pd.DataFrame,
        day: np.ndarray,
        values: dict[str, np.ndarray],
        reasons: dict[int, str],
        invalid: np.ndarray,
        no_data: np.ndarray,
        outside: np.ndarray,
    ) -> tuple[list[PriceRow], list[Problem]]:
        summary = self.summary
        has_lines = LINE in frame and bool(frame[LINE].notna().any())
        lines = frame[LINE].tolist() if has_lines else [None] * len(frame)
        summary.outside_range += int(outside.sum())
        if no_data.any():
            summary.no_data += int(no_data.sum())
            room = MAX_LISTED_DAYS - len(summary.no_data_days)
            if room > 0:
                summary.no_data_days.extend(day[no_data][:room].astype(object).tolist())
        problem = _ProblemMaker(self.source, frame, lines, day)
        problems = [problem(i, reasons[i]) for i in sorted(reasons)]
        valid = np.flatnonzero(~invalid & ~no_data & ~outside)
        if not len(valid):
            return [], problems
        ordinals = (day[valid].astype("int64") + _ORDINAL_1970).tolist()
        prints = _fingerprints([values[name][valid] for name in VALUE_FIELDS]).tolist()
        if has_lines:
            marks = [
                ((lines[i] or 0) << 64) | p for i, p in zip(valid.tolist(), prints, strict=True)
            ]
        else:
            marks = prints
        seen = self._seen
        fresh: list[int]  # indices into `valid` of the rows seen for the first time
        if len(set(ordinals)) == len(ordinals) and seen.keys().isdisjoint(ordinals):
            # The usual case, without a per-row Python loop: every day is new.
            seen.update(zip(ordinals, marks, strict=True))
            fresh = list(range(len(valid)))
        else:
            fresh = []
            for k, ordinal in enumerate(ordinals):
                known = seen.get(ordinal)
                if known is None:
                    seen[ordinal] = marks[k]
                    fresh.append(k)
                elif known & _HASH_MASK == prints[k]:
                    summary.duplicates += 1
                else:
                    first_line = known >> 64
                    first = f"line {first_line}" if first_line else "an earlier row"
                    problems.append(
                        problem(
                            int(valid[k]),
                            f"date {day[valid[k]]} appears twice with different values (first "
                            f"on {first}, which is kept)",
                        )
                    )
        closes = values["close"][valid]
        if self.max_daily_move is not None and fresh:
            fresh_ordinals = np.asarray([ordinals[k] for k in fresh], dtype=np.int64)
            moved = self._large_moves(fresh_ordinals, closes[fresh])
            if moved:
                for j, reason in sorted(moved.items()):
                    k = fresh[j]
                    del seen[ordinals[k]]  # refused: a later row for this day may still load
                    problems.append(problem(int(valid[k]), reason))
                fresh = [k for j, k in enumerate(fresh) if j not in moved]
        if not fresh:
            return [], problems
        self._closes.update((ordinals[k], float(closes[k])) for k in fresh)
        days = day[valid].astype(object).tolist()
        columns = [_cells(values[name][valid]) for name in VALUE_FIELDS]
        if len(fresh) == len(valid):
            rows = list(map(_new_price_row, zip(days, *columns, strict=True)))
            first_day, last_day = min(days), max(days)
        else:
            rows = [_new_price_row((days[k], *(column[k] for column in columns))) for k in fresh]
            first_day, last_day = min(row[0] for row in rows), max(row[0] for row in rows)
        if summary.first_date is None or first_day < summary.first_date:
            summary.first_date = first_day
        if summary.last_date is None or last_day > summary.last_date:
            summary.last_date = last_day
        return rows, problems

    # ------------------------------------------------------------ day-over-day moves

    def _large_moves(self, ordinals: np.ndarray, closes: np.ndarray) -> dict[int, str]:
        """Positions (into the arguments) of closes that moved more than the bound, and why.

        Days are walked in date order in runs without a gap longer than MOVE_WINDOW_DAYS; each
        close is compared with the last accepted one. A run starts from the accepted day just
        before it (this ingest's, else the stored one) or, in a file listed newest first, just
        after it.
        """
        order = np.argsort(ordinals, kind="stable")
        days, values = ordinals[order], closes[order]
        breaks = (np.flatnonzero(np.diff(days) > MOVE_WINDOW_DAYS) + 1).tolist()
        refused: dict[int, str] = {}
        for low, high in zip([0, *breaks], [*breaks, len(days)], strict=True):
            run_days, run_closes = days[low:high], values[low:high]
            reference = self._reference_before(int(run_days[0]))
            backwards = False
            if reference is None:
                reference = self._reference_after(int(run_days[-1]))
                backwards = reference is not None
            if backwards:
                run_days, run_closes = run_days[::-1], run_closes[::-1]
            chain = run_closes if reference is None else np.r_[reference.close, run_closes]
            if not np.any(np.abs(chain[1:] / chain[:-1] - 1) > self.max_daily_move):
                continue  # the usual case: no Python loop
            for j, reason in self._walk(run_days, run_closes, reference):
                position = high - 1 - j if backwards else low + j
                refused[int(order[position])] = reason
        return refused

    def _walk(
        self, days: np.ndarray, closes: np.ndarray, reference: _Reference | None
    ) -> list[tuple[int, str]]:
        """(index, reason) of each close too far from the last accepted one before it."""
        bound = self.max_daily_move
        assert bound is not None
        ordinals, values = days.tolist(), closes.tolist()

        def too_far(close: float, previous: float) -> bool:
            return abs(close / previous - 1) > bound

        refused: list[tuple[int, str]] = []
        start = 0
        if reference is None:
            # Nothing to compare the first day with: if it disagrees with the next day while the
            # next two agree, the first day is the odd one out.
            odd_first = (
                len(values) >= 3
                and too_far(values[0], values[1])
                and not too_far(values[2], values[1])
            )
            if odd_first:
                second = _Reference(ordinals[1], values[1])
                refused.append((0, self._move_reason(values[0], second)))
                reference, start = second, 2
            else:
                reference, start = _Reference(ordinals[0], values[0]), 1
        for j in range(start, len(values)):
            if too_far(values[j], reference.close):
                refused.append((j, self._move_reason(values[j], reference)))
            else:
                reference = _Reference(ordinals[j], values[j])
        return refused

    def _move_reason(self, close: float, reference: _Reference) -> str:
        change = close / reference.close - 1
        direction = "above" if change > 0 else "below"
        return (
            f"close {close:g} is {abs(change):.1%} {direction} {reference.describe()}, beyond the "
            f"{self.max_daily_move:.0%} a day allowed (probably a bad value; if it is real, "
            "pass --allow-large-moves or raise PRICECAST_MAX_DAILY_MOVE)"
        )

    def _reference_before(self, ordinal: int) -> _Reference | None:
        for back in range(1, MOVE_WINDOW_DAYS + 1):
            close = self._closes.get(ordinal - back)
            if close is not None:
                return _Reference(ordinal - back, close)
        if self._stored_close is not None:
            stored = self._stored_close(dt.date.fromordinal(ordinal))
            if stored is not None:
                return _Reference(stored[0].toordinal(), stored[1], stored=True)
        return None

    def _reference_after(self, ordinal: int) -> _Reference | None:
        for ahead in range(1, MOVE_WINDOW_DAYS + 1):
            close = self._closes.get(ordinal + ahead)
            if close is not None:
                return _Reference(ordinal + ahead, close)
        return None


class _ProblemMaker:
    """Problems for rows of one raw frame, its columns read once (not per refused row)."""

    def __init__(
        self, source: PriceSource, frame: pd.DataFrame, lines: list[Any], day: np.ndarray
    ) -> None:
        self._source = source
        self._frame = frame
        self._lines = lines
        self._day = day
        self._raw: list[Any] | None = frame[RAW].tolist() if RAW in frame else None
        self._dates: list[Any] | None = None

    def __call__(self, i: int, reason: str) -> Problem:
        line = self._lines[i]
        line_number = None if line is None or pd.isna(line) else int(line)
        if not np.isnat(self._day[i]):
            day_text = str(self._day[i])
        else:
            if self._dates is None:
                self._dates = self._frame[DATE].tolist()
            day_text = str(self._dates[i])
        if self._raw is not None and self._raw[i] is not None:
            raw = str(self._raw[i])
        else:
            cells = self._frame.iloc[i][[DATE, *VALUE_FIELDS]]
            raw = ",".join("" if pd.isna(v) else str(v) for v in cells)
        return Problem(self._source.locate(line_number, day_text), line_number, raw, reason)
