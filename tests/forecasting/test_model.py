"""Training on the process's cached trainer gives what compiling the model itself gives, and
traces TensorFlow's training step once per architecture, not once per fit."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting import model as lstm

CONFIG = lstm.LSTMConfig(window_weeks=6, epochs=3)


def _data(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.normal(scale=0.05, size=(n, CONFIG.window_weeks, 7))
    return inputs, rng.normal(scale=0.05, size=(n, 7))


def _fit_compiled(model: object, inputs: np.ndarray, targets: np.ndarray, **options: float) -> None:
    """The plain Keras way: compile this model with a new optimizer and fit it."""
    import keras
    import tensorflow as tf

    lstm.seed_everything(int(options["seed"]))
    model.compile(  # type: ignore[attr-defined]
        optimizer=keras.optimizers.RMSprop(learning_rate=options["learning_rate"]),
        loss="mse",
        steps_per_execution=lstm.STEPS_PER_EXECUTION,
    )
    stream = (
        tf.data.Dataset.from_tensor_slices((inputs.astype("float32"), targets.astype("float32")))
        .shuffle(len(inputs), seed=int(options["seed"]), reshuffle_each_iteration=True)
        .repeat(CONFIG.epochs)
        .batch(CONFIG.batch_size)
    )
    model.fit(stream, epochs=1, shuffle=False, verbose=0)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def no_trainers() -> None:
    lstm._TRAINERS.clear()


def test_the_cached_trainer_gives_the_weights_compiling_the_model_gives() -> None:
    # Several fits in a row, other seeds, rates and sizes: each one equals its plain fit exactly
    # (the optimizer state starts new every time; nothing leaks from one fit to the next).
    for seed, rate, n in ((0, 1e-3, 40), (1, 5e-3, 33), (0, 1e-4, 52)):
        inputs, targets = _data(seed, n)
        cached = lstm.build_lstm(CONFIG, seed=seed)
        plain = lstm.build_lstm(CONFIG, seed=seed)
        options = {"learning_rate": rate, "seed": seed}
        lstm.train(cached, inputs, targets, epochs=CONFIG.epochs, batch_size=32, **options)
        _fit_compiled(plain, inputs, targets, **options)
        for got, want in zip(cached.get_weights(), plain.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_one_architecture_traces_its_training_step_once() -> None:
    inputs, targets = _data(3)
    for seed in (0, 1, 2):
        model = lstm.build_lstm(CONFIG, seed=seed)
        lstm.train(model, inputs, targets, learning_rate=1e-3, epochs=2, batch_size=32, seed=seed)
        ((trainer, step),) = [(t, t.train_function) for t in lstm._TRAINERS.values()]
        if seed == 0:
            first = (trainer, step)
        assert (trainer, step) == first  # the same compiled function, not a new trace
    wider = lstm.build_lstm(CONFIG.with_overrides(window_weeks=8), seed=0)
    lstm.train(
        wider,
        np.zeros((10, 8, 7)),
        np.zeros((10, 7)),
        learning_rate=1e-3,
        epochs=1,
        batch_size=32,
        seed=0,
    )
    assert len(lstm._TRAINERS) == 2


def test_a_model_with_dropout_trains_itself() -> None:
    """Dropout's random state is not in the weights: such a model is compiled and fit as is."""
    inputs, targets = _data(4)
    config = lstm.LSTMConfig(window_weeks=6, epochs=2, dropout=0.2)
    model = lstm.build_lstm(config, seed=0)
    lstm.train(model, inputs, targets, learning_rate=1e-3, epochs=2, batch_size=32, seed=0)
    assert lstm._TRAINERS == {} and model.optimizer is not None


def test_an_lstm_with_recurrent_dropout_trains_itself() -> None:
    import keras

    inputs, targets = _data(5)
    source = keras.Input(shape=(CONFIG.window_weeks, 7))
    hidden = keras.layers.LSTM(4, recurrent_dropout=0.1, seed=0)(source)
    model = keras.Model(source, keras.layers.Dense(7)(hidden))
    lstm.train(model, inputs, targets, learning_rate=1e-3, epochs=1, batch_size=32, seed=0)
    assert lstm._TRAINERS == {} and model.optimizer is not None


def test_a_warmed_trainer_is_the_one_the_first_fit_uses_and_changes_no_weights() -> None:
    lstm.warm_trainer(CONFIG)
    ((warm, step),) = [(t, t.train_function) for t in lstm._TRAINERS.values()]
    assert step is not None  # traced by the warm-up

    inputs, targets = _data(5)
    cached = lstm.build_lstm(CONFIG, seed=5)
    plain = lstm.build_lstm(CONFIG, seed=5)
    options = {"learning_rate": 2e-3, "seed": 5}
    lstm.train(cached, inputs, targets, epochs=CONFIG.epochs, batch_size=32, **options)
    _fit_compiled(plain, inputs, targets, **options)

    assert [(t, t.train_function) for t in lstm._TRAINERS.values()] == [(warm, step)]
    for got, want in zip(cached.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_seed_gives_the_same_network_while_another_thread_loads_networks(tmp_path) -> None:
    """Keras draws initial weights from Python's global `random`: a network loaded on another
    thread (the champion on a job's loader thread, MLflow's check of a logged model) between
    the seeding and the layers would change them. Without NETWORK_LOCK most builds here differ."""
    import threading

    reference = lstm.build_lstm(CONFIG, seed=0).get_weights()
    inputs, targets = _data(3)
    trained = lstm.build_lstm(CONFIG, seed=0)
    options = {"learning_rate": 1e-3, "epochs": 2, "batch_size": 16, "seed": 0}
    lstm.train(trained, inputs, targets, **options)  # type: ignore[arg-type]
    trained_reference = trained.get_weights()
    saved = lstm.save_model(lstm.build_lstm(CONFIG, seed=1), tmp_path / "other.keras")
    stop = threading.Event()

    def load_in_a_loop() -> None:
        while not stop.wait(0.005):  # a breath between loads: the builds get the lock
            lstm.load_model(saved)

    loader = threading.Thread(target=load_in_a_loop, daemon=True)
    loader.start()
    try:
        for _ in range(6):
            built = lstm.build_lstm(CONFIG, seed=0).get_weights()
            assert all(np.array_equal(a, b) for a, b in zip(reference, built, strict=True))
        for _ in range(2):
            model = lstm.build_lstm(CONFIG, seed=0)
            lstm.train(model, inputs, targets, **options)  # type: ignore[arg-type]
            weights = zip(trained_reference, model.get_weights(), strict=True)
            assert all(np.array_equal(a, b) for a, b in weights)
    finally:
        stop.set()
        loader.join()
