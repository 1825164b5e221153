"""The universe night's pure decisions: which tickers still need the night, how they are split
into batches, how many batch runs the pool can take. No I/O; the flows supply the facts."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")
#: Where the nights run: in this process, on the work pool, or the pool when one is deployed.
Where = Literal["auto", "local", "pool"]
WHERE: tuple[str, ...] = ("auto", "local", "pool")


@dataclass(frozen=True)
class Member:
    """A ticker of the universe and its price source (an ingest spec)."""

    ticker: str
    source: str

    def to_parameter(self) -> dict[str, str]:
        return {"ticker": self.ticker, "source": self.source}

    @classmethod
    def from_parameter(cls, value: Mapping[str, str]) -> Member:
        return cls(ticker=str(value["ticker"]), source=str(value["source"]))


@dataclass(frozen=True)
class NightParams:
    """The options every ticker's `nightly` gets (None: the nightly's own default)."""

    holdout_weeks: int | None = None
    strategies: list[str] | None = None
    epochs: int | None = None
    seed: int = 0
    force: bool = False
    window_weeks: int | None = None

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fanout:
    """How a universe night is spread: `local` members run in the parent's own process, each of
    `remote` is one batch run on the pool."""

    local: list[Member] = field(default_factory=list)
    remote: list[list[Member]] = field(default_factory=list)


def pending_members(
    members: Sequence[Member], done: Collection[str], *, force: bool = False
) -> list[Member]:
    """Members whose night is not done yet (all of them when `force`), in the given order."""
    return list(members) if force else [m for m in members if m.ticker not in done]


def split_batches(items: Sequence[T], batches: int) -> list[list[T]]:
    """`items` dealt round-robin into at most `batches` non-empty groups of sizes differing by
    at most one (ticker order is kept inside each group)."""
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    count = min(batches, len(items))
    return [list(items[i::count]) for i in range(count)]


def pool_capacity(*, online_workers: int, runs_per_worker: int, pool_limit: int | None) -> int:
    """Flow runs the pool can execute at once: each online worker takes `runs_per_worker`, and
    the pool's own concurrency limit (None: unlimited) caps the sum."""
    capacity = online_workers * runs_per_worker
    return capacity if pool_limit is None else min(capacity, pool_limit)


def plan_fanout(members: Sequence[Member], *, capacity: int, parent_in_pool: bool) -> Fanout:
    """Split the pending members over the pool's capacity.

    A parent that itself runs on a worker of the pool holds one of the slots: it runs one share
    in its own process instead of waiting idle, so a single worker with one slot never waits
    for itself. With no capacity known (no worker online) there is one batch, which waits for a
    worker.
    """
    if not members:
        return Fanout()
    if parent_in_pool:
        shares = split_batches(members, max(1, capacity))
        return Fanout(local=shares[0], remote=shares[1:])
    return Fanout(remote=split_batches(members, max(1, capacity)))
