"""When a batch starts its training process before the first lane needs it."""

from __future__ import annotations

import datetime as dt

from flows.universe.batch import _will_train
from flows.universe.plan import NightParams

SUNDAY = dt.date(2021, 12, 26)
MONDAY = dt.date(2021, 12, 27)


def test_a_batch_prewarms_when_a_week_completes_or_training_is_forced() -> None:
    assert _will_train(NightParams(), [SUNDAY])
    assert _will_train(NightParams(), [MONDAY, SUNDAY])
    assert _will_train(NightParams(force=True), [MONDAY])
    assert not _will_train(NightParams(), [MONDAY])
    assert not _will_train(NightParams(strategies=[], force=True), [SUNDAY])
