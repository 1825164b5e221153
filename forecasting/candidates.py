"""The LSTM strategies: `fresh` (a new model on all windows) and `retrain` (an old model fine-tuned
on the windows it has not seen), plus the saved model that serves as champion.

Every one is a `Forecaster`; every fitted one can be saved as `.keras` + metadata and loaded back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd

from forecasting import model as lstm
from forecasting.base import Forecaster, NotFittedError
from forecasting.baselines import Drift, Naive
from forecasting.strategies import check_strategies
from forecasting.weeks import from_point_relative
from forecasting.windows import Windows, make_windows, trainable_target_weeks
from pricecast.errors import DataError

if TYPE_CHECKING:
    import keras

FORMAT_VERSION = 1
ONE_WEEK = pd.Timedelta(weeks=1)


def _timestamp_or_none(value: Any) -> pd.Timestamp | None:
    if value is None or value == "" or value == "None":
        return None
    return pd.Timestamp(value)


@dataclass(frozen=True)
class ModelMetadata:
    """What a saved model needs to be used later: the config it was trained with, the ticker,
    and the training cutoff (the last target week it trained on)."""

    config: lstm.LSTMConfig
    strategy: str
    ticker: str = ""
    seed: int = 0
    training_cutoff: pd.Timestamp | None = None
    first_training_target: pd.Timestamp | None = None
    n_training_windows: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-able and MLflow-friendly (every value a str, int or float)."""
        return {
            "format_version": FORMAT_VERSION,
            "strategy": self.strategy,
            "ticker": self.ticker,
            "seed": self.seed,
            "training_cutoff": _iso(self.training_cutoff),
            "first_training_target": _iso(self.first_training_target),
            "n_training_windows": self.n_training_windows,
            **self.config.to_dict(),
            **{f"extra.{k}": v for k, v in self.extra.items()},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelMetadata:
        """Inverse of `to_dict`; accepts strings for every value (MLflow params/tags)."""
        try:
            return cls(
                config=lstm.LSTMConfig.from_dict(dict(values)),
                strategy=str(values.get("strategy", "fresh")),
                ticker=str(values.get("ticker", "")),
                seed=int(values.get("seed", 0)),
                training_cutoff=_timestamp_or_none(values.get("training_cutoff")),
                first_training_target=_timestamp_or_none(values.get("first_training_target")),
                n_training_windows=int(values.get("n_training_windows", 0)),
                extra={
                    k.removeprefix("extra."): str(v)
                    for k, v in values.items()
                    if k.startswith("extra.")
                },
            )
        except (TypeError, ValueError) as exc:
            raise DataError(f"model metadata is unreadable ({exc}): {dict(values)}") from exc


def _iso(ts: pd.Timestamp | None) -> str:
    return "" if ts is None else ts.date().isoformat()


def metadata_path(model_path: Path) -> Path:
    """The JSON file saved next to a `.keras` model: `<name>.keras` -> `<name>.json`."""
    return Path(model_path).with_suffix(".json")


class LSTMForecaster(Forecaster):
    """Shared by every LSTM forecaster: predict from the fitted Keras model, describe, save."""

    name = "lstm"

    def __init__(self, *, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.model: keras.Model | None = None
        self.metadata: ModelMetadata | None = None
        self.train_seconds: float = 0.0

    @property
    def is_fitted(self) -> bool:
        return self.model is not None and self.metadata is not None

    def _fitted(self) -> tuple[keras.Model, ModelMetadata]:
        if self.model is None or self.metadata is None:
            raise NotFittedError(f"{self.name}: call fit() before predict() or save()")
        return self.model, self.metadata

    @property
    def training_cutoff(self) -> pd.Timestamp | None:
        return self._fitted()[1].training_cutoff

    def predict(self, weeks: pd.DataFrame, target_weeks: Sequence[pd.Timestamp]) -> np.ndarray:
        model, meta = self._fitted()
        windows = make_windows(
            weeks,
            target_weeks,
            window_weeks=meta.config.window_weeks,
            normalisation=meta.config.normalisation,
        )
        relative = lstm.predict_relative(model, windows.inputs)
        return from_point_relative(relative, windows.base_closes[:, None])

    def describe(self) -> dict[str, Any]:
        if self.metadata is None:
            return {"strategy": self.name, "fitted": False}
        return {**self.metadata.to_dict(), "train_seconds": round(self.train_seconds, 3)}

    def save(self, path: Path) -> Path:
        """Write `path` (must end in .keras) and its metadata JSON next to it; returns `path`."""
        model, meta = self._fitted()
        saved = lstm.save_model(model, Path(path))
        metadata_path(saved).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
        return saved


class SavedLSTM(LSTMForecaster):
    """An already trained model (a loaded champion). It predicts; it is never refitted here —
    wrap it in `RetrainLSTM(base=...)` to train it further."""

    def __init__(self, model: keras.Model, metadata: ModelMetadata, *, name: str) -> None:
        super().__init__(name=name)
        expected = (None, metadata.config.window_weeks, 7)
        if tuple(model.input_shape) != expected:
            raise DataError(
                f"model input shape {model.input_shape} does not match its metadata "
                f"(window_weeks={metadata.config.window_weeks} -> {expected})"
            )
        self.model = model
        self.metadata = metadata

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        raise RuntimeError(
            f"{self.name} is a saved, already trained model; wrap it in RetrainLSTM(base=...) "
            "to train it on newer windows"
        )


def from_keras(
    model: keras.Model, metadata: Mapping[str, Any] | ModelMetadata, *, name: str = "champion"
) -> SavedLSTM:
    """A fitted forecaster from a Keras model and its metadata (e.g. MLflow params/tags)."""
    meta = metadata if isinstance(metadata, ModelMetadata) else ModelMetadata.from_dict(metadata)
    return SavedLSTM(model, meta, name=name)


def load_forecaster(path: Path, *, name: str = "champion") -> SavedLSTM:
    """Load a model written by `save()`: `<name>.keras` plus `<name>.json`."""
    path = Path(path)
    meta_file = metadata_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise DataError(f"no saved model at {path} (needs {path.name} and {meta_file.name})")
    metadata = json.loads(meta_file.read_text())
    return from_keras(lstm.load_model(path), metadata, name=name)


def _training_windows(
    weeks: pd.DataFrame,
    config: lstm.LSTMConfig,
    *,
    after: pd.Timestamp | None,
    before: pd.Timestamp,
) -> Windows:
    targets = trainable_target_weeks(
        weeks, window_weeks=config.window_weeks, after=after, before=before
    )
    if config.history_windows:
        targets = targets[-config.history_windows :]
    return make_windows(
        weeks,
        targets,
        window_weeks=config.window_weeks,
        normalisation=config.normalisation,
        with_targets=True,
    )


class FreshLSTM(LSTMForecaster):
    """A new, seeded model trained on every window whose target week is before `train_until`.

    `config.history_windows` > 0 keeps only that many of the latest windows.
    """

    name = "fresh"

    def __init__(
        self,
        config: lstm.LSTMConfig | None = None,
        *,
        seed: int = 0,
        ticker: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.config = config or lstm.LSTMConfig()
        self.seed = seed
        self.ticker = ticker

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        windows = _training_windows(weeks, self.config, after=None, before=train_until)
        if len(windows) == 0:
            raise DataError(
                f"{self.name}: no complete {self.config.window_weeks}-week window has a target "
                f"week before {pd.Timestamp(train_until).date()}; ingest more history"
            )
        model = lstm.build_lstm(self.config, seed=self.seed)
        assert windows.targets is not None
        self.train_seconds = lstm.train(
            model,
            windows.inputs,
            windows.targets,
            learning_rate=self.config.learning_rate,
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            seed=self.seed,
            loss=self.config.loss,
        )
        self.model = model
        self.metadata = ModelMetadata(
            config=self.config,
            strategy="fresh",
            ticker=self.ticker,
            seed=self.seed,
            training_cutoff=windows.target_weeks[-1],
            first_training_target=windows.target_weeks[0],
            n_training_windows=len(windows),
        )
        return self


class RetrainLSTM(LSTMForecaster):
    """An existing model's weights, fine-tuned at a lower learning rate on the windows whose
    target week is after its training cutoff and before `train_until`.

    `replay_windows` older windows (the latest ones it already saw) are mixed in to limit
    forgetting. With `base=None` (a backtest with no champion) the old model is first trained
    fresh on targets up to `bootstrap_gap_weeks` before `train_until`; both steps are described.
    """

    name = "retrain"

    def __init__(
        self,
        base: LSTMForecaster | None = None,
        *,
        config: lstm.LSTMConfig | None = None,
        learning_rate: float | None = None,
        epochs: int | None = None,
        replay_windows: int = 0,
        bootstrap_gap_weeks: int = 10,
        seed: int = 0,
        ticker: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if base is not None and not base.is_fitted:
            raise NotFittedError("retrain: the base model must be fitted (or loaded) first")
        self.base = base
        base_config = base.metadata.config if base is not None and base.metadata else None
        self.config = base_config or config or lstm.LSTMConfig()
        self.learning_rate = learning_rate or self.config.learning_rate / 10
        self.epochs = self.config.epochs if epochs is None else epochs
        self.replay_windows = replay_windows
        self.bootstrap_gap_weeks = bootstrap_gap_weeks
        self.seed = seed
        self.ticker = ticker or (base.metadata.ticker if base and base.metadata else "")
        self.steps: list[dict[str, Any]] = []

    def _bootstrap(self, weeks: pd.DataFrame, train_until: pd.Timestamp) -> LSTMForecaster:
        cutoff = pd.Timestamp(train_until) - ONE_WEEK * self.bootstrap_gap_weeks
        old = FreshLSTM(self.config, seed=self.seed, ticker=self.ticker).fit(
            weeks, train_until=cutoff
        )
        assert old.metadata is not None
        self.steps.append(
            {
                "step": "bootstrap",
                "trained_until": _iso(cutoff),
                "training_cutoff": _iso(old.metadata.training_cutoff),
                "n_windows": old.metadata.n_training_windows,
                "seconds": round(old.train_seconds, 3),
            }
        )
        return old

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        self.steps = []
        base = self.base if self.base is not None else self._bootstrap(weeks, train_until)
        base_model, base_meta = base._fitted()
        new = trainable_target_weeks(
            weeks,
            window_weeks=self.config.window_weeks,
            after=base_meta.training_cutoff,
            before=train_until,
        )
        replay = pd.DatetimeIndex([])
        if self.replay_windows and base_meta.training_cutoff is not None:
            seen = trainable_target_weeks(
                weeks,
                window_weeks=self.config.window_weeks,
                before=base_meta.training_cutoff + pd.Timedelta(days=1),
            )
            replay = seen[max(len(seen) - self.replay_windows, 0) :]
        targets = replay.append(new)
        windows = make_windows(
            weeks,
            targets,
            window_weeks=self.config.window_weeks,
            normalisation=self.config.normalisation,
            with_targets=True,
        )
        model = lstm.copy_model(base_model)
        assert windows.targets is not None
        seconds = lstm.train(
            model,
            windows.inputs,
            windows.targets,
            learning_rate=self.learning_rate,
            epochs=self.epochs if len(new) else 0,
            batch_size=self.config.batch_size,
            seed=self.seed,
            loss=self.config.loss,
        )
        self.steps.append(
            {
                "step": "retrain",
                "from_training_cutoff": _iso(base_meta.training_cutoff),
                "n_new_windows": len(new),
                "n_replayed_windows": len(replay),
                "learning_rate": self.learning_rate,
                "epochs": self.epochs,
                "seconds": round(seconds, 3),
            }
        )
        self.train_seconds = sum(step["seconds"] for step in self.steps)
        self.model = model
        self.metadata = ModelMetadata(
            config=self.config,
            strategy="retrain",
            ticker=self.ticker,
            seed=self.seed,
            training_cutoff=new[-1] if len(new) else base_meta.training_cutoff,
            first_training_target=base_meta.first_training_target,
            n_training_windows=base_meta.n_training_windows + len(new),
            extra={
                "base_training_cutoff": _iso(base_meta.training_cutoff),
                "retrain_learning_rate": str(self.learning_rate),
                "retrain_epochs": str(self.epochs),
                "n_new_windows": str(len(new)),
                "replay_windows": str(self.replay_windows),
            },
        )
        return self

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["steps"] = self.steps
        described["bootstrapped"] = self.base is None
        return described


def build_candidates(
    strategies: Sequence[str],
    *,
    seed: int = 0,
    epochs: int | None = None,
    window_weeks: int | None = None,
    ticker: str = "",
    config: lstm.LSTMConfig | None = None,
    champion: LSTMForecaster | None = None,
) -> list[Forecaster]:
    """Unfitted forecasters for `strategies` (names from STRATEGIES), on the default config.

    `retrain` starts from `champion` when given, else it bootstraps its own old model.
    Raises ConfigError on an unknown or repeated name.
    """
    check_strategies(strategies)
    base = (config or lstm.LSTMConfig()).with_overrides(epochs=epochs, window_weeks=window_weeks)

    def build(strategy: str) -> Forecaster:
        if strategy == "fresh":
            return FreshLSTM(base, seed=seed, ticker=ticker)
        if strategy == "retrain":
            return RetrainLSTM(champion, config=base, epochs=epochs, seed=seed, ticker=ticker)
        if strategy == "drift":
            return Drift(lookback_weeks=base.window_weeks)
        return Naive()

    return [build(strategy) for strategy in strategies]
