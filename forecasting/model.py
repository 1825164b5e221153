"""The weekly LSTM (the book's `bitcoin_lstm_v0` by default): build, train, predict, save, load.

Only ML code paths import this module: it loads TensorFlow (seconds) at import time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from forecasting.weeks import DAYS_PER_WEEK
from forecasting.windows import NORMALISATIONS


@dataclass(frozen=True)
class LSTMConfig:
    """Everything that shapes the network and its training; recorded with every saved model."""

    window_weeks: int = 40
    normalisation: str = "last_close"
    units: int = 7
    layers: int = 1
    dropout: float = 0.0
    activation: str = "linear"
    learning_rate: float = 1e-3
    epochs: int = 100
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalisation!r}; choose from {NORMALISATIONS}"
            )
        for name in ("window_weeks", "units", "layers", "epochs", "batch_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LSTMConfig:
        """Rebuild from a dict whose values may be strings (MLflow params and tags are)."""
        kwargs: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in values:
                default = getattr(cls(), field.name)
                kwargs[field.name] = type(default)(values[field.name])
        return cls(**kwargs)

    def with_overrides(self, **changes: Any) -> LSTMConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def seed_everything(seed: int) -> None:
    """Same seed -> same weights, same shuffles, same results (deterministic TF kernels)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_lstm(config: LSTMConfig, *, seed: int) -> keras.Model:
    """LSTM layer(s) of `units` over the window's weeks (7 closes each) -> Dense(7)."""
    seed_everything(seed)
    inputs = keras.Input(shape=(config.window_weeks, DAYS_PER_WEEK), name="weeks")
    x = inputs
    for layer in range(config.layers):
        last = layer == config.layers - 1
        x = keras.layers.LSTM(config.units, return_sequences=not last, name=f"lstm_{layer}")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, seed=seed)(x)
    outputs = keras.layers.Dense(DAYS_PER_WEEK, activation=config.activation, name="next_week")(x)
    return keras.Model(inputs, outputs, name="weekly_lstm")


def train(
    model: keras.Model,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
) -> float:
    """Fit `model` in place (MSE, RMSprop at `learning_rate`); returns the seconds it took."""
    seed_everything(seed)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate), loss="mse")
    started = time.perf_counter()
    if len(inputs) and epochs:
        model.fit(
            inputs.astype("float32"),
            targets.astype("float32"),
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
        )
    return time.perf_counter() - started


def predict_relative(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """One batched forward pass: (n, W, 7) relative inputs -> (n, 7) relative closes."""
    if len(inputs) == 0:
        return np.empty((0, DAYS_PER_WEEK))
    # A direct call avoids model.predict()'s per-call tf.function setup for small batches.
    return np.asarray(model(inputs.astype("float32"), training=False), dtype="float64")


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy with the same architecture and weights (training it leaves `model`)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def save_model(model: keras.Model, path: Path) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a Keras model file must end in .keras, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_model(path: Path) -> keras.Model:
    # compile=False: a loaded model serves predictions; training recompiles with its own rate.
    return keras.models.load_model(Path(path), compile=False)
