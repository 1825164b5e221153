"""The universe's pure parts: what is pending, the batches, the fan-out over the pool's capacity,
the `--json` shape and the artifact table."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from flows.universe.plan import (
    Member,
    NightParams,
    pending_members,
    plan_fanout,
    pool_capacity,
    split_batches,
)
from flows.universe.report import (
    TickerOutcome,
    UniverseResult,
    markdown,
    one_line,
    summary_lines,
)

MEMBERS = [Member(t, f"synthetic:{i}") for i, t in enumerate("ABCDEFG")]


def test_pending_skips_done_unless_forced() -> None:
    assert [m.ticker for m in pending_members(MEMBERS[:4], {"B", "D", "Z"})] == ["A", "C"]
    assert pending_members(MEMBERS[:4], {"B"}, force=True) == MEMBERS[:4]


@pytest.mark.parametrize(
    ("n", "batches", "sizes"),
    [(7, 1, [7]), (7, 2, [4, 3]), (7, 3, [3, 2, 2]), (7, 7, [1] * 7), (7, 20, [1] * 7),
     (0, 3, [])],
)  # fmt: skip
def test_split_batches_are_balanced_and_keep_order(n: int, batches: int, sizes: list[int]) -> None:
    groups = split_batches(MEMBERS[:n], batches)
    assert [len(g) for g in groups] == sizes
    assert sorted(m.ticker for g in groups for m in g) == [m.ticker for m in MEMBERS[:n]]
    for group in groups:
        assert [m.ticker for m in group] == sorted(m.ticker for m in group)
    with pytest.raises(ValueError, match="batches must be >= 1"):
        split_batches(MEMBERS, 0)


def test_pool_capacity_is_workers_times_runs_capped_by_the_pool_limit() -> None:
    assert pool_capacity(online_workers=3, runs_per_worker=2, pool_limit=None) == 6
    assert pool_capacity(online_workers=3, runs_per_worker=2, pool_limit=4) == 4
    assert pool_capacity(online_workers=0, runs_per_worker=1, pool_limit=None) == 0


def test_a_parent_outside_the_pool_fans_everything_out() -> None:
    fan = plan_fanout(MEMBERS[:4], capacity=2, parent_in_pool=False)
    assert fan.local == []
    assert [[m.ticker for m in b] for b in fan.remote] == [["A", "C"], ["B", "D"]]


def test_a_parent_on_a_worker_runs_one_share_itself() -> None:
    fan = plan_fanout(MEMBERS[:4], capacity=2, parent_in_pool=True)
    assert [m.ticker for m in fan.local] == ["A", "C"]
    assert [[m.ticker for m in b] for b in fan.remote] == [["B", "D"]]
    # One worker with one slot, held by the parent: it runs everything and waits for nobody.
    alone = plan_fanout(MEMBERS[:4], capacity=1, parent_in_pool=True)
    assert (len(alone.local), alone.remote) == (4, [])


def test_no_worker_online_still_submits_one_batch_that_waits() -> None:
    fan = plan_fanout(MEMBERS[:3], capacity=0, parent_in_pool=False)
    assert [len(b) for b in fan.remote] == [3]
    assert plan_fanout([], capacity=4, parent_in_pool=True).remote == []


def test_member_and_params_round_trip_as_deployment_parameters() -> None:
    member = Member("BTC-USD", "csv:/data/btc.csv")
    assert Member.from_parameter(member.to_parameter()) == member
    params = NightParams(holdout_weeks=3, strategies=["fresh"], epochs=5, seed=1, force=True)
    assert params.to_kwargs() == {
        "holdout_weeks": 3, "strategies": ["fresh"], "epochs": 5, "seed": 1, "force": True,
        "window_weeks": None,
    }  # fmt: skip


def _result() -> UniverseResult:
    return UniverseResult(
        as_of=dt.date(2020, 9, 6),
        tickers=(
            TickerOutcome(
                "AAA",
                "done",
                trained=True,
                promoted="fresh",
                champion_version=1,
                decision="promote",
                candidate="fresh",
                candidate_mape=3.1,
                naive_mape=7.6,
                train_seconds=4.0,
            ),
            TickerOutcome(
                "BBB",
                "done",
                trained=True,
                champion_version=2,
                decision="keep",
                candidate="retrain",
                candidate_mape=8.0,
                naive_mape=7.6,
                train_seconds=5.5,
            ),
            TickerOutcome("CCC", "skipped", champion_version=3),
            TickerOutcome("DDD", "failed", error="SourceError: /x|y.csv: file not found"),
        ),  # fmt: skip
        total_seconds=42.25,
        where="this process",
    )


def test_json_has_exactly_the_documented_shape() -> None:
    payload = json.loads(json.dumps(_result().to_dict()))
    assert set(payload) == {"as_of", "tickers", "failed", "timings"}
    assert payload["as_of"] == "2020-09-06" and payload["failed"] == 1
    assert payload["timings"] == {"total_seconds": 42.25, "train_seconds": 9.5}
    assert payload["tickers"][0] == {
        "ticker": "AAA", "status": "done", "trained": True, "promoted": "fresh",
        "champion_version": 1, "error": None,
    }  # fmt: skip
    assert [t["status"] for t in payload["tickers"]] == ["done", "done", "skipped", "failed"]
    assert payload["tickers"][3]["error"] == "SourceError: /x|y.csv: file not found"


def test_artifact_is_one_table_with_a_row_per_ticker() -> None:
    text = markdown(_result())
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[0] == (
        "| ticker | trained | decision | champion version | candidate MAPE vs naive | error |"
    )
    assert rows[2] == "| AAA | yes | promote fresh | v1 | fresh 3.10 % vs naive 7.60 % |  |"
    assert rows[3] == "| BBB | yes | keep | v2 | retrain 8.00 % vs naive 7.60 % |  |"
    assert rows[4] == "| CCC | no | already done | v3 | - |  |"
    # A pipe in a message must not split the cell.
    assert rows[5] == "| DDD | no | - | - | - | SourceError: /x\\|y.csv: file not found |"
    assert len(rows) == 6


def test_summary_names_the_failure_and_how_to_resume() -> None:
    lines = summary_lines(_result())
    assert lines[0] == "universe night as of 2020-09-06 (this process):"
    assert any(line.strip().startswith("DDD") and "FAILED: SourceError" in line for line in lines)
    assert lines[-1].startswith("fix the failing tickers and rerun the same --as-of")


def test_one_line_errors() -> None:
    assert one_line(ValueError("first\n  second  \n")) == "ValueError: first; second"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("x" * 900)).endswith("...")
