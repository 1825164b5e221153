"""Ingest benchmark: 365,000 synthetic rows (100 tickers x 10 years) into PostgreSQL through
`flows.ingest.load.ingest`, against a plain COPY of the same rows; then peak memory for N and 4N
rows.

Both timed paths start from the same rows in memory (the synthetic frames are generated first;
the generator's own cost is reported separately). Before each timed phase the database is
checkpointed and vacuumed, so no phase pays for the previous one's background work.

    .venv/bin/python bench/ingest.py [--admin-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

Creates and drops its own scratch database. Targets: first load >= 0.5x COPY's rows/s; a
re-ingest of the same rows (nothing changes) no slower than the first load; peak memory flat in N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from flows.ingest.load import ingest  # noqa: E402
from flows.ingest.sources import FIELDS  # noqa: E402
from flows.ingest.sources.csv_source import CsvSource  # noqa: E402
from flows.ingest.sources.synthetic_source import SyntheticSource  # noqa: E402
from forecasting.synthetic import synthetic_prices  # noqa: E402
from storage.db import ensure_schema, make_engine  # noqa: E402

ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TICKERS = 100
START = dt.date(2015, 1, 1)
END = START + dt.timedelta(days=3650 - 1)  # 10 years of days: 3,650 rows per ticker


def tickers(n: int, prefix: str = "T") -> list[str]:
    return [f"{prefix}{i:03d}-USD" for i in range(n)]


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ReplaySource:
    """Frames read from a source beforehand, served again: times ingest without the generator,
    so ingest and COPY start from the same rows in memory."""

    def __init__(self, source, frames: dict[str, list]) -> None:
        self.label = source.label
        self._source = source
        self._frames = frames

    def read(self, *, ticker: str, start, end):
        yield from self._frames[ticker]

    def locate(self, line, day: str) -> str:
        return self._source.locate(line, day)

    def notes(self) -> list[str]:
        return []


def generate(names: list[str]) -> tuple[dict[str, list], float]:
    """The synthetic source's raw frames per ticker, and how long generating them took."""
    source = SyntheticSource(seed=0)
    began = time.perf_counter()
    frames = {t: list(source.read(ticker=t, start=START, end=END)) for t in names}
    return frames, time.perf_counter() - began


def load(engine, names: list[str], frames: dict[str, list] | None = None) -> tuple[int, float]:
    """Ingest every ticker through the project's path (`flows.ingest.load.ingest`); (rows, seconds).

    With `frames`, the synthetic rows are replayed from memory; without, they are generated."""
    source = SyntheticSource(seed=0)
    if frames is not None:
        source = ReplaySource(source, frames)
    rows = 0
    began = time.perf_counter()
    for ticker in names:
        summary = ingest(engine=engine, ticker=ticker, source=source, start=START, end=END)
        rows += summary.rows_read
    return rows, time.perf_counter() - began


def settle(engine) -> None:
    """Let the previous phase's background work (flush, vacuum, statistics) finish first, so
    each timed phase pays only for itself."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CHECKPOINT"))
        conn.execute(text("VACUUM ANALYZE daily_prices"))


def copy_text(names: list[str]) -> tuple[io.StringIO, int]:
    """The same rows as COPY text (built before timing: COPY gets its data for free)."""
    source = SyntheticSource(seed=0)
    stamp = dt.datetime.now(dt.UTC).isoformat()
    buffer = io.StringIO()
    rows = 0
    for ticker in names:
        for frame in source.read(ticker=ticker, start=START, end=END):
            frame = frame[list(FIELDS)].copy()
            frame.insert(0, "ticker", ticker)
            frame["source"] = source.label
            frame["ingested_at"] = stamp
            frame.to_csv(buffer, sep="\t", header=False, index=False, na_rep="\\N")
            rows += len(frame)
    buffer.seek(0)
    return buffer, rows


def copy_into_scratch(engine, buffer: io.StringIO) -> float:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE copy_scratch (LIKE daily_prices INCLUDING ALL)"))
    began = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(
            "COPY copy_scratch (ticker, date, open, high, low, close, volume, market_cap, "
            "source, ingested_at) FROM STDIN",
            buffer,
        )
    return time.perf_counter() - began


def child(url: str, mode: str, argument: str) -> None:
    """Run in a fresh process: report the peak RSS before and after one ingest job."""
    engine = make_engine(url)
    ensure_schema(engine)
    baseline = peak_rss_mb()
    if mode == "tickers":
        count = int(argument)
        rows, seconds = load(engine, tickers(count, prefix=f"M{count}x"))
    else:
        path = Path(argument)
        began = time.perf_counter()
        summary = ingest(
            engine=engine, ticker=f"CSV-{path.stem}", source=CsvSource(path), as_of=None
        )
        rows, seconds = summary.rows_read, time.perf_counter() - began
    engine.dispose()
    print(
        json.dumps({"rows": rows, "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "s": seconds})
    )


def measure(url: str, mode: str, argument: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, mode, argument],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_long_csv(folder: Path, years: int) -> Path:
    """One ticker, `years` of daily rows ending 2024-12-31, written as a Yahoo-style file."""
    end = dt.date(2024, 12, 31)
    frame = synthetic_prices(end.replace(year=end.year - years) + dt.timedelta(days=1), end, seed=1)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    path = folder / f"long_{years}y.csv"
    frame.rename(columns=str.title).to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=ADMIN_URL, help="Postgres maintenance database")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"pricecast_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        ensure_schema(engine)
        names = tickers(TICKERS)
        print(f"scratch database {name}; {TICKERS} tickers x {START}..{END}")

        frames, generate_s = generate(names)
        settle(engine)
        rows, first_s = load(engine, names, frames)
        print(f"first load : {rows:>9,} rows in {first_s:6.2f} s = {rows / first_s:>9,.0f} rows/s")
        settle(engine)
        again_rows, again_s = load(engine, names, frames)
        print(
            f"re-ingest  : {again_rows:>9,} rows in {again_s:6.2f} s = "
            f"{again_rows / again_s:>9,.0f} rows/s (nothing changes)"
        )
        settle(engine)
        _, synthetic_s = load(engine, names)
        print(
            f"re-ingest, generating the prices too: {synthetic_s:6.2f} s "
            f"(generating alone: {generate_s:.2f} s)"
        )
        buffer, copy_rows = copy_text(names)
        settle(engine)
        copy_s = copy_into_scratch(engine, buffer)
        print(
            f"COPY       : {copy_rows:>9,} rows in {copy_s:6.2f} s = "
            f"{copy_rows / copy_s:>9,.0f} rows/s (text COPY from memory into a table like "
            "daily_prices, same primary key and checks)"
        )
        with engine.connect() as conn:
            check = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM daily_prices), (SELECT count(*) FROM "
                    "copy_scratch), (SELECT count(*) FROM daily_prices d JOIN copy_scratch c "
                    "USING (ticker, date) WHERE d.close = c.close AND d.volume = c.volume)"
                )
            ).one()
        print(
            f"same rows  : daily_prices {check[0]:,}, COPY table {check[1]:,}, equal {check[2]:,}"
        )
        ratio = (rows / first_s) / (copy_rows / copy_s)
        print(
            f"ratio      : first load / COPY = {ratio:.2f} (target >= 0.5); "
            f"re-ingest / first load = {first_s / again_s:.2f} (target >= 1.0)"
        )
        engine.dispose()

        print("peak memory (fresh process each; baseline = after imports and connecting):")
        for count in (TICKERS, 4 * TICKERS):
            m = measure(url, "tickers", str(count))
            print(
                f"  synthetic {m['rows']:>9,} rows ({count} tickers): peak {m['peak_mb']:6.1f} MB, "
                f"baseline {m['baseline_mb']:6.1f} MB, +{m['peak_mb'] - m['baseline_mb']:5.1f} MB"
            )
        with tempfile.TemporaryDirectory() as folder:
            for years in (80, 320):
                path = write_long_csv(Path(folder), years)
                m = measure(url, "csv", str(path))
                size = path.stat().st_size / 2**20
                print(
                    f"  one CSV   {m['rows']:>9,} rows ({years} years, {size:.1f} MB): "
                    f"peak {m['peak_mb']:6.1f} MB, baseline {m['baseline_mb']:6.1f} MB, "
                    f"+{m['peak_mb'] - m['baseline_mb']:5.1f} MB"
                )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        print(f"dropped {name}")


if __name__ == "__main__":
    main()
