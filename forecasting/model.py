"""The weekly LSTM (the book's `bitcoin_lstm_v0` by default): build, train, predict, save, load.

TensorFlow takes seconds to load, so it is imported inside the functions that need it: importing
this module (e.g. for LSTMConfig) stays cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecasting.weeks import DAYS_PER_WEEK
from forecasting.windows import NORMALISATIONS

if TYPE_CHECKING:
    import keras

LOSSES: tuple[str, ...] = ("mse", "mae", "huber")

#: Training steps run per call into TensorFlow: fewer Python round trips for a tiny network.
STEPS_PER_EXECUTION = 16

#: Held while a thread seeds the global random generators and then builds, clones or loads a
#: network, or sets up a fit's shuffled stream. Keras draws every layer's initial weights from
#: Python's global `random` (which `seed_everything` seeds), so a network built or loaded on
#: another thread in between (the champion loading on a training job's loader thread, MLflow
#: loading a logged model back to check it on the logging thread) would change the weights a
#: seed gives, and with them the scores. Re-entrant: a fit clones its trainer under it.
NETWORK_LOCK = threading.RLock()


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
    members: int = 1
    loss: str = "mse"
    # The latest 78 windows (1.5 years of targets, the span the book trains on) beat all of
    # history on a validation span before the benchmark's (bench/book.py, docs/BENCHMARK.md);
    # 0 = every window.
    history_windows: int = 78

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalisation!r}; choose from {NORMALISATIONS}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {LOSSES}")
        for name in ("window_weeks", "units", "layers", "epochs", "batch_size", "members"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.history_windows < 0:
            raise ValueError(f"history_windows must be >= 0, got {self.history_windows}")
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
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_lstm(config: LSTMConfig, *, seed: int) -> keras.Model:
    """LSTM layer(s) of `units` over the window's weeks (7 closes each) -> Dense(7).

    With `members` > 1, that many such branches side by side, their outputs averaged.
    """
    import keras

    with NETWORK_LOCK:
        seed_everything(seed)
        inputs = keras.Input(shape=(config.window_weeks, DAYS_PER_WEEK), name="weeks")
        heads = []
        for member in range(config.members):
            prefix = "" if config.members == 1 else f"m{member}_"
            x = inputs
            for layer in range(config.layers):
                last = layer == config.layers - 1
                x = keras.layers.LSTM(
                    config.units, return_sequences=not last, name=f"{prefix}lstm_{layer}"
                )(x)
                if config.dropout:
                    x = keras.layers.Dropout(config.dropout, seed=seed + member)(x)
            heads.append(
                keras.layers.Dense(
                    DAYS_PER_WEEK, activation=config.activation, name=f"{prefix}next_week"
                )(x)
            )
        outputs = heads[0] if len(heads) == 1 else keras.layers.Average(name="next_week")(heads)
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
    loss: str = "mse",
) -> float:
    """Fit `model` in place (MSE, RMSprop at `learning_rate`); returns the seconds it took.

    All epochs run as one pass over a seeded, reshuffled-per-epoch stream: Keras' per-epoch
    overhead (about 0.1 s) would otherwise cost more than training this small network.

    The fit runs on this process's compiled trainer for the model's architecture (`_trainer`):
    the model's weights go in, a fresh optimizer state and `learning_rate`, and the trained
    weights come back, bit for bit what compiling and fitting `model` itself gives. TensorFlow
    traces a training step once per architecture instead of once per fit, which is about half
    of a fit's time here, and memory it never gives back (~28 MB per ticker's fits).
    """
    import tensorflow as tf

    stream = None
    with NETWORK_LOCK:  # the seeds, the trainer and the stream's shuffle seeds (see the lock)
        seed_everything(seed)
        trainer = _trainer(model, learning_rate=learning_rate, loss=loss)
        if len(inputs) and epochs:
            stream = (
                tf.data.Dataset.from_tensor_slices(
                    (inputs.astype("float32"), targets.astype("float32"))
                )
                .shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
                .repeat(epochs)
                .batch(batch_size)
            )
    started = time.perf_counter()
    if stream is not None:
        trainer.fit(stream, epochs=1, shuffle=False, verbose=0)
        if trainer is not model:
            model.set_weights(trainer.get_weights())
    return time.perf_counter() - started


def warm_trainer(config: LSTMConfig | None = None) -> float:
    """Compile `config`'s network (default: the nightly's) and trace its training step on a
    batch of zero windows, so that this process's first real fit of that architecture does not
    pay it (~1 s); the seconds it took. The trainer's weights and optimizer state are set anew
    by every fit (`_trainer`), so nothing of this reaches a result."""
    config = config or LSTMConfig()
    started = time.perf_counter()
    model = build_lstm(config, seed=0)
    n = config.batch_size
    train(
        model,
        np.zeros((n, config.window_weeks, DAYS_PER_WEEK)),
        np.zeros((n, DAYS_PER_WEEK)),
        learning_rate=config.learning_rate,
        epochs=1,
        batch_size=config.batch_size,
        seed=0,
        loss=config.loss,
    )
    return time.perf_counter() - started


#: Compiled trainers by architecture (the model's JSON) and loss, newest last; a few at most.
_TRAINERS: dict[tuple[str, str], keras.Model] = {}
MAX_TRAINERS = 4


def _trainer(model: keras.Model, *, learning_rate: float, loss: str) -> keras.Model:
    """A compiled model of `model`'s architecture holding `model`'s weights, with its RMSprop
    state as new (zero slots, step 0) at `learning_rate`: the process's cached one, or `model`
    itself compiled when caching could change the result (a layer with its own random state,
    dropout or noise, whose state the weights do not carry)."""
    import keras

    def compiled(target: keras.Model) -> keras.Model:
        target.compile(
            optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
            loss=loss,
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        return target

    if any(_random_in_training(layer) for layer in model.layers):
        return compiled(model)
    key = (model.to_json(), loss)
    trainer = _TRAINERS.pop(key, None)
    if trainer is None:
        trainer = compiled(keras.models.clone_model(model))
        while len(_TRAINERS) >= MAX_TRAINERS:
            _TRAINERS.pop(next(iter(_TRAINERS)))
    _TRAINERS[key] = trainer
    trainer.set_weights(model.get_weights())
    optimizer = trainer.optimizer
    for variable in optimizer.variables:  # the step counter and the RMS slots, as if new
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    optimizer.learning_rate = learning_rate
    return trainer


def _random_in_training(layer: keras.layers.Layer) -> bool:
    """A layer that draws random numbers while training (dropout, noise): its generator's state
    is not among the weights a trainer takes over."""
    kind, config = type(layer).__name__, layer.get_config()
    if "Dropout" in kind or "Noise" in kind:
        return True
    return bool(config.get("dropout") or config.get("recurrent_dropout"))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda z: z,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0.0),
}


def _lstm_forward(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    config = layer.get_config()
    kernel, recurrent, bias = (w.astype("float64") for w in layer.get_weights())
    units = config["units"]
    h = np.zeros((len(x), units))
    c = np.zeros((len(x), units))
    outputs = []
    for step in range(x.shape[1]):
        # Keras packs the gates as input, forget, cell, output.
        z = x[:, step] @ kernel + h @ recurrent + bias
        i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1) if config["return_sequences"] else h


def _supported(layer: keras.layers.Layer) -> bool:
    kind, config = type(layer).__name__, layer.get_config()
    if kind in ("InputLayer", "Dropout", "Average"):
        return True
    if kind == "LSTM":
        return (
            config["activation"] == "tanh"
            and config["recurrent_activation"] == "sigmoid"
            and config["use_bias"]
            and not config["go_backwards"]
            and not config["return_state"]
        )
    return kind == "Dense" and config["activation"] in _ACTIVATIONS and config["use_bias"]


def _numpy_forward(model: keras.Model, inputs: np.ndarray) -> np.ndarray | None:
    """The forward pass of a build_lstm() network in numpy; None for any other architecture.

    TensorFlow spends most of a second setting up one small LSTM call; these few matrix
    products take milliseconds and give the same numbers (float64, so within float32 noise).
    """
    if not all(_supported(layer) for layer in model.layers) or len(model.inputs) != 1:
        return None
    values = {id(model.inputs[0]): inputs.astype("float64")}
    for layer in model.layers:  # in graph order: every input is computed before it is used
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        sources = layer.input if isinstance(layer.input, list) else [layer.input]
        if any(id(source) not in values for source in sources):
            return None
        x = [values[id(source)] for source in sources]
        if kind == "Dropout":  # off at inference
            out = x[0]
        elif kind == "Average":
            out = np.mean(x, axis=0)
        elif kind == "LSTM":
            out = _lstm_forward(layer, x[0])
        else:
            kernel, bias = (w.astype("float64") for w in layer.get_weights())
            out = _ACTIVATIONS[layer.get_config()["activation"]](x[0] @ kernel + bias)
        values[id(layer.output)] = out
    return values.get(id(model.outputs[0]))


def predict_relative(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """One batched forward pass: (n, W, 7) relative inputs -> (n, 7) relative closes."""
    if len(inputs) == 0:
        return np.empty((0, DAYS_PER_WEEK))
    fast = _numpy_forward(model, inputs)
    if fast is not None:
        return fast
    return np.asarray(model(inputs.astype("float32"), training=False), dtype="float64")


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy with the same architecture and weights (training it leaves `model`)."""
    import keras

    with NETWORK_LOCK:
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
    import keras

    # compile=False: a loaded model serves predictions; training recompiles with its own rate.
    with NETWORK_LOCK:
        return keras.models.load_model(Path(path), compile=False)
