"""Tiny pure-Python jobs for the worker's tests: the real process and protocol, no TensorFlow."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from flows.training.protocol import (
    JsonObject,
    ModelOutcome,
    TrainingResult,
    read_closes,
    read_job,
)
from pricecast.errors import DataError, ServiceUnavailable

ECHO_LINE = "echo job ran for"
DYING_LINE = "about to be killed"


class ChampionUnreadable(ServiceUnavailable):
    """A pricecast error kind defined outside pricecast.errors."""


def echo(workdir: Path) -> JsonObject:
    """A result built from the job and its closes, with the worker's pid in the timings."""
    job = read_job(workdir)
    closes = read_closes(workdir)
    print(f"{ECHO_LINE} {job.ticker}", file=sys.stderr)
    outcome = ModelOutcome(
        name="echo",
        role="baseline",
        rmse=1.5,
        mape=2.5,
        weekly_rmse=[1.0, 2.0],
        weekly_mape=[2.0, 3.0],
        train_seconds=0.25,
        predict_seconds=0.0,
        params={"seed": str(job.seed)},
        metadata={},
        run_id=None,
        model_uri=None,
        model_id=None,
        next_week=[float(c) for c in closes["close"].tail(7)],
    )
    result = TrainingResult(
        held_out_weeks=[job.as_of],
        train_until=job.as_of,
        models=[outcome],
        timings={"pid": float(os.getpid())},
    )
    return result.to_payload()


_KEPT: list[bytearray] = []


def leaky(workdir: Path) -> JsonObject:
    """`echo` that keeps 40 MB alive after it returns, as TensorFlow's fits do."""
    _KEPT.append(bytearray(os.urandom(1024)) * (40 * 1024))
    return echo(workdir)


def bad_data(workdir: Path) -> JsonObject:
    raise DataError("the week of 2020-01-06 has 5 closes, 7 needed")


def unreadable_champion(workdir: Path) -> JsonObject:
    raise ChampionUnreadable("MLflow at http://u:***@mlflow:5000 failed while loading")


def bug(workdir: Path) -> JsonObject:
    raise ValueError("an unexpected bug\nwith a second line")


def killed(workdir: Path) -> JsonObject:
    print(DYING_LINE, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def stuck(workdir: Path) -> JsonObject:
    time.sleep(60)
    raise AssertionError("the test stops this job long before")


def runtime(workdir: Path) -> JsonObject:
    """The child's TensorFlow thread pools and malloc arena limit, as the result's timings."""
    import tensorflow as tf

    read_job(workdir)
    timings = {
        "intra_op_threads": float(tf.config.threading.get_intra_op_parallelism_threads()),
        "inter_op_threads": float(tf.config.threading.get_inter_op_parallelism_threads()),
        "malloc_arena_max": float(os.environ.get("MALLOC_ARENA_MAX", "0")),
    }
    result = TrainingResult(held_out_weeks=[], train_until=None, models=[], timings=timings)
    return result.to_payload()
