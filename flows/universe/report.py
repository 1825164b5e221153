"""What a universe night (or a universe backfill) produced, per ticker: the `nightly --all --json`
shape, the parent run's markdown table and the CLI's lines. Pure: built from facts, no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

#: done: the night ran now and completed; failed: it ran now and failed; skipped: it was
#: already done before this run (a rerun does only the tickers not done).
Status = Literal["done", "failed", "skipped"]


@dataclass(frozen=True)
class TickerOutcome:
    """One ticker's night as of the universe's date."""

    ticker: str
    status: Status
    trained: bool = False
    #: The candidate promoted tonight, if any.
    promoted: str | None = None
    champion_version: int | None = None
    #: The gate's action ("promote" / "keep"), None when the night did not reach the gate.
    decision: str | None = None
    #: Tonight's best candidate and its MAPE, and naive's, on the same held-out weeks.
    candidate: str | None = None
    candidate_mape: float | None = None
    naive_mape: float | None = None
    train_seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "ticker": self.ticker,
            "status": self.status,
            "trained": self.trained,
            "promoted": self.promoted,
            "champion_version": self.champion_version,
            "error": self.error,
        }


@dataclass(frozen=True)
class UniverseResult:
    as_of: dt.date
    tickers: tuple[TickerOutcome, ...]
    total_seconds: float
    #: Where the nights ran, for people: "this process", "pool pricecast (2 batch runs)".
    where: str = "this process"
    flow_run_id: str | None = None

    @property
    def failed(self) -> int:
        return sum(t.status == "failed" for t in self.tickers)

    @property
    def train_seconds(self) -> float:
        return round(sum(t.train_seconds for t in self.tickers), 3)

    def to_dict(self) -> dict[str, object]:
        """The `pricecast nightly --all --json` shape."""
        return {
            "as_of": self.as_of.isoformat(),
            "tickers": [t.to_dict() for t in self.tickers],
            "failed": self.failed,
            "timings": {
                "total_seconds": round(self.total_seconds, 3),
                "train_seconds": self.train_seconds,
            },
        }


@dataclass(frozen=True)
class TickerBackfill:
    """One ticker's replay over the range: nights replayed now, those already done, and where it
    stopped if a night failed (its later nights wait for a rerun)."""

    ticker: str
    status: Status
    replayed: int = 0
    trained_nights: int = 0
    skipped_done: int = 0
    failed_at: dt.date | None = None
    error: str | None = None
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "ticker": self.ticker,
            "status": self.status,
            "replayed": self.replayed,
            "trained_nights": self.trained_nights,
            "skipped_done": self.skipped_done,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "error": self.error,
        }


@dataclass(frozen=True)
class UniverseBackfill:
    start: dt.date
    end: dt.date
    every: str
    nights: int
    tickers: tuple[TickerBackfill, ...]
    total_seconds: float
    where: str = "this process"

    @property
    def failed(self) -> int:
        return sum(t.status == "failed" for t in self.tickers)

    def to_dict(self) -> dict[str, object]:
        """The `pricecast backfill --all --json` shape."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "every": self.every,
            "nights": self.nights,
            "tickers": [t.to_dict() for t in self.tickers],
            "failed": self.failed,
            "timings": {
                "total_seconds": round(self.total_seconds, 3),
                "train_seconds": round(sum(t.train_seconds for t in self.tickers), 3),
            },
        }


def one_line(exc: BaseException, limit: int = 800) -> str:
    """An error as one line, `Kind: message` (tables and JSON hold one line per ticker)."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mape_vs_naive(t: TickerOutcome) -> str:
    if t.candidate_mape is None or t.naive_mape is None:
        return "-"
    return f"{t.candidate} {t.candidate_mape:.2f} % vs naive {t.naive_mape:.2f} %"


def _decision(t: TickerOutcome) -> str:
    if t.status == "skipped":
        return "already done"
    if t.status == "failed":
        return "-"
    if t.decision == "promote":
        return f"promote {t.promoted}"
    return t.decision or "no training"


def markdown(result: UniverseResult) -> str:
    """The parent run's artifact: one row per ticker."""
    done = sum(t.status == "done" for t in result.tickers)
    skipped = sum(t.status == "skipped" for t in result.tickers)
    lines = [
        f"# Universe night as of {result.as_of}",
        "",
        f"{len(result.tickers)} ticker(s): {done} done, {result.failed} failed, "
        f"{skipped} already done; ran in {result.where}; "
        f"{result.total_seconds:.0f} s wall, {result.train_seconds:.0f} s training.",
        "",
        "| ticker | trained | decision | champion version | candidate MAPE vs naive | error |",
        "|---|---|---|---|---|---|",
    ]
    for t in result.tickers:
        champion = f"v{t.champion_version}" if t.champion_version is not None else "-"
        lines.append(
            f"| {_cell(t.ticker)} | {'yes' if t.trained else 'no'} | {_cell(_decision(t))} | "
            f"{champion} | {_cell(_mape_vs_naive(t))} | {_cell(t.error or '')} |"
        )
    return "\n".join(lines) + "\n"


def summary_lines(result: UniverseResult) -> list[str]:
    """`pricecast nightly --all`: one line per ticker, then the totals."""
    lines = [f"universe night as of {result.as_of} ({result.where}):"]
    for t in result.tickers:
        champion = f"champion v{t.champion_version}" if t.champion_version else "no champion"
        if t.status == "failed":
            detail = f"FAILED: {t.error}"
        elif t.status == "skipped":
            detail = f"already done ({champion})"
        else:
            detail = f"{'trained' if t.trained else 'no training'}, {_decision(t)}, {champion}"
            if t.candidate_mape is not None:
                detail += f"; {_mape_vs_naive(t)}"
        lines.append(f"  {t.ticker:<12} {detail}")
    lines.append(
        f"{len(result.tickers)} ticker(s), {result.failed} failed; "
        f"{result.total_seconds:.0f} s wall, {result.train_seconds:.0f} s training"
    )
    if result.failed:
        lines.append("fix the failing tickers and rerun the same --as-of: only they run again")
    return lines


def backfill_lines(result: UniverseBackfill) -> list[str]:
    """`pricecast backfill --all`: one line per ticker, then the totals."""
    lines = [
        f"universe backfill {result.start}..{result.end} every {result.every} "
        f"({result.nights} night(s) per ticker, {result.where}):"
    ]
    for t in result.tickers:
        line = (
            f"  {t.ticker:<12} {t.replayed} replayed ({t.trained_nights} trained), "
            f"{t.skipped_done} already done"
        )
        if t.status == "failed":
            line += f"; STOPPED at {t.failed_at}: {t.error}"
        lines.append(line)
    lines.append(f"{len(result.tickers)} ticker(s), {result.failed} stopped; "
                 f"{result.total_seconds:.0f} s")  # fmt: skip
    if result.failed:
        lines.append("fix the cause and rerun the same command: each ticker resumes at its stop")
    return lines
