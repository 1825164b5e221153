"""Every forecaster keeps the contract; the LSTM strategies train on the right windows,
save and load, and repeat themselves exactly with the same seed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.backtest import backtest
from forecasting.base import Forecaster, NotFittedError
from forecasting.baselines import Drift, Naive
from forecasting.windows import trainable_target_weeks

keras = pytest.importorskip("keras")

from forecasting.candidates import (  # noqa: E402 - needs keras
    FreshLSTM,
    ModelMetadata,
    RetrainLSTM,
    from_keras,
    load_forecaster,
)
from forecasting.model import LSTMConfig  # noqa: E402

TINY = LSTMConfig(window_weeks=4, units=3, epochs=2, batch_size=16, history_windows=0)
WEEK = pd.Timedelta(weeks=1)

FACTORIES: dict[str, Callable[[], Forecaster]] = {
    "naive": Naive,
    "drift": lambda: Drift(lookback_weeks=4),
    "fresh": lambda: FreshLSTM(TINY, seed=1),
    "retrain": lambda: RetrainLSTM(config=TINY, seed=1, epochs=2),
}


def _split(weeks: pd.DataFrame, back: int = 10) -> tuple[pd.Timestamp, list[pd.Timestamp]]:
    """A training cutoff `back` weeks before the end, and the weeks after it as targets."""
    train_until = weeks.index[-back]
    return train_until, list(weeks.index[-back:])


@pytest.fixture(scope="module")
def fitted_fresh(synthetic_weeks: pd.DataFrame) -> FreshLSTM:
    """One small model trained once, shared by the tests that only read it."""
    train_until, _ = _split(synthetic_weeks)
    return FreshLSTM(TINY, seed=0, ticker="SYN").fit(synthetic_weeks, train_until=train_until)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_forecaster_keeps_the_contract(kind: str, synthetic_weeks: pd.DataFrame):
    forecaster = FACTORIES[kind]()
    train_until, targets = _split(synthetic_weeks)
    assert isinstance(forecaster.name, str) and forecaster.name == kind
    with pytest.raises(NotFittedError):
        forecaster.predict(synthetic_weeks, targets)
    assert forecaster.fit(synthetic_weeks, train_until=train_until) is forecaster
    predicted = forecaster.predict(synthetic_weeks, targets)
    assert predicted.shape == (len(targets), 7)
    assert np.isfinite(predicted).all() and (predicted > 0).all()
    assert forecaster.describe()["strategy"] == kind


def test_fresh_trains_on_every_window_before_train_until(
    synthetic_weeks: pd.DataFrame, fitted_fresh: FreshLSTM
):
    train_until, _ = _split(synthetic_weeks)
    fresh = fitted_fresh
    expected = trainable_target_weeks(synthetic_weeks, window_weeks=4, before=train_until)
    assert fresh.metadata is not None
    assert fresh.metadata.training_cutoff == expected[-1] == train_until - WEEK
    assert fresh.metadata.first_training_target == expected[0]
    assert fresh.metadata.n_training_windows == len(expected)


def test_history_windows_keeps_only_the_latest_windows(synthetic_weeks: pd.DataFrame):
    train_until, _ = _split(synthetic_weeks)
    config = LSTMConfig(window_weeks=4, units=3, epochs=1, history_windows=5)
    fresh = FreshLSTM(config, seed=0).fit(synthetic_weeks, train_until=train_until)
    assert fresh.metadata is not None and fresh.metadata.n_training_windows == 5
    assert fresh.metadata.first_training_target == train_until - 5 * WEEK


def test_same_seed_same_predictions_other_seed_other_predictions(synthetic_weeks: pd.DataFrame):
    train_until, targets = _split(synthetic_weeks)
    runs = [
        FreshLSTM(TINY, seed=seed)
        .fit(synthetic_weeks, train_until=train_until)
        .predict(synthetic_weeks, targets)
        for seed in (3, 3, 4)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_save_and_load_round_trip(
    synthetic_weeks: pd.DataFrame, fitted_fresh: FreshLSTM, tmp_path: Path
):
    train_until, targets = _split(synthetic_weeks)
    fresh = fitted_fresh
    path = fresh.save(tmp_path / "models" / "fresh.keras")
    assert path.is_file() and path.with_suffix(".json").is_file()
    loaded = load_forecaster(path, name="champion")
    assert loaded.name == "champion" and loaded.is_fitted
    assert loaded.metadata == fresh.metadata
    np.testing.assert_allclose(
        loaded.predict(synthetic_weeks, targets), fresh.predict(synthetic_weeks, targets)
    )
    with pytest.raises(RuntimeError, match="RetrainLSTM"):
        loaded.fit(synthetic_weeks, train_until=train_until)


def test_from_keras_accepts_string_metadata_as_mlflow_returns_it(
    synthetic_weeks: pd.DataFrame, fitted_fresh: FreshLSTM
):
    train_until, targets = _split(synthetic_weeks)
    fresh = fitted_fresh
    as_strings = {k: str(v) for k, v in fresh.metadata.to_dict().items()}
    champion = from_keras(fresh.model, as_strings)
    assert champion.metadata == fresh.metadata
    assert champion.training_cutoff == train_until - WEEK
    np.testing.assert_array_equal(
        champion.predict(synthetic_weeks, targets), fresh.predict(synthetic_weeks, targets)
    )


def test_retrain_fine_tunes_only_on_windows_after_the_base_cutoff(
    synthetic_weeks: pd.DataFrame, fitted_fresh: FreshLSTM, tmp_path: Path
):
    # The shared model trained on targets before index[-10]: eight weeks later there are 8 new.
    base_until, _ = _split(synthetic_weeks)
    train_until = base_until + 8 * WEEK
    base = load_forecaster(fitted_fresh.save(tmp_path / "base.keras"))
    weights_before = [w.copy() for w in base.model.get_weights()]
    retrain = RetrainLSTM(base=base, epochs=2, replay_windows=3, seed=0)
    retrain.fit(synthetic_weeks, train_until=train_until)
    assert retrain.metadata is not None
    assert retrain.metadata.training_cutoff == train_until - WEEK
    assert retrain.metadata.extra["n_new_windows"] == "8"  # weeks base_until .. train_until - 1
    assert retrain.learning_rate == pytest.approx(TINY.learning_rate / 10)
    (step,) = retrain.describe()["steps"]
    assert step["n_new_windows"] == 8 and step["n_replayed_windows"] == 3
    # The champion it started from is left untouched.
    for before, after in zip(weights_before, base.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(weights_before, retrain.model.get_weights(), strict=True)
    )


def test_retrain_without_a_base_bootstraps_then_retrains(synthetic_weeks: pd.DataFrame):
    train_until = synthetic_weeks.index[-5]
    retrain = RetrainLSTM(config=TINY, epochs=2, bootstrap_gap_weeks=6, seed=0)
    retrain.fit(synthetic_weeks, train_until=train_until)
    bootstrap, step = retrain.describe()["steps"]
    assert bootstrap["step"] == "bootstrap"
    assert bootstrap["trained_until"] == (train_until - 6 * WEEK).date().isoformat()
    assert bootstrap["training_cutoff"] == (train_until - 7 * WEEK).date().isoformat()
    assert step["step"] == "retrain" and step["n_new_windows"] == 6
    assert retrain.train_seconds == pytest.approx(bootstrap["seconds"] + step["seconds"], abs=0.01)


def test_retrain_needs_a_fitted_base():
    with pytest.raises(NotFittedError):
        RetrainLSTM(base=FreshLSTM(TINY))


def test_metadata_that_cannot_be_read_is_a_clear_error():
    from pricecast.errors import DataError

    with pytest.raises(DataError, match="metadata"):
        ModelMetadata.from_dict({"window_weeks": "forty", "strategy": "fresh"})


def test_backtest_with_lstms_is_blind_to_later_rows(
    synthetic_daily: pd.DataFrame,
):
    from forecasting.weeks import group_iso_weeks

    as_of = pd.Timestamp("2023-04-30")  # a Sunday, eight weeks before the data ends

    def run(daily: pd.DataFrame) -> dict:
        weeks = group_iso_weeks(daily)
        candidates = [FreshLSTM(TINY, seed=2), RetrainLSTM(config=TINY, seed=2, epochs=2), Naive()]
        result = backtest(
            weeks, as_of=as_of, candidates=candidates, holdout_weeks=5, window_weeks=4
        )
        return {c.name: (c.rmse, c.mape, c.predictions) for c in result.candidates}

    cut = synthetic_daily[synthetic_daily["date"] <= as_of]
    # Same seed, so any difference could only come from rows after as_of.
    first, with_later_rows = run(cut), run(synthetic_daily)
    for name, (rmse, mape, predictions) in first.items():
        assert with_later_rows[name][0] == rmse and with_later_rows[name][1] == mape
        np.testing.assert_array_equal(with_later_rows[name][2], predictions)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        LSTMConfig(window_weeks=4, units=5, layers=2, dropout=0.2, activation="tanh"),
        LSTMConfig(window_weeks=4, units=3, members=3),
    ],
    ids=["default", "stacked", "averaged-members"],
)
def test_fast_inference_matches_keras(config: LSTMConfig):
    from forecasting.model import build_lstm, predict_relative

    model = build_lstm(config, seed=5)
    inputs = np.random.default_rng(0).normal(0.0, 0.1, size=(19, 4, 7))
    expected = np.asarray(model(inputs.astype("float32"), training=False))
    np.testing.assert_allclose(predict_relative(model, inputs), expected, atol=1e-6)
