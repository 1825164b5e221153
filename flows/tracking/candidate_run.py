"""What an MLflow candidate run contains, logged by the training child: a nested run under the
night's parent with params, scores (per held-out week as steps), the predictions CSV, a
forecast-vs-actual plot (with the 80/95 % bands) and, for a model trained tonight, the servable
pyfunc (network + interval calibration from tonight's held-out residuals; `flows.serving`).

The plots are matplotlib `Figure`s, not pyplot's: a training job draws on two threads at once
(the night's chart while the last model's plot), and pyplot keeps its figures in one global
registry that matplotlib does not make thread-safe.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.tracking.tracker import configure_http_defaults, log_values, param_value, unavailable
from flows.training.protocol import ModelRole
from pricecast.errors import ServiceUnavailable

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo
    from mlflow.store.artifact.artifact_repository import ArtifactRepository

    from forecasting.backtest import BacktestResult, CandidateResult
    from forecasting.candidates import LSTMForecaster
    from forecasting.intervals import IntervalCalibration

PREDICTIONS_FILE = "predictions.csv"
PLOT_FILE = "forecast_vs_actual.png"
INTERVALS_FILE = "intervals.json"
MODEL_NAME = "model"


@dataclass(frozen=True)
class LoggedCandidate:
    run_id: str
    model_uri: str | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class TrainedModel:
    """A model trained tonight, as its run logs it: the Keras model, its metadata, and the first
    held-out window with the model's own output for it (the signature's examples).

    With `forecaster`, `calibration` and `recent_closes` the run logs the servable pyfunc
    (`flows.serving.log_servable_model`); without them, the bare Keras model (the old way)."""

    keras_model: keras.Model
    metadata: dict[str, str]
    input_example: np.ndarray
    output_example: np.ndarray
    forecaster: LSTMForecaster | None = None
    calibration: IntervalCalibration | None = None
    recent_closes: pd.DataFrame | None = None


def trained_model(
    forecaster: LSTMForecaster,
    weeks: pd.DataFrame,
    scored: CandidateResult,
    backtest: BacktestResult,
    *,
    recent_closes: pd.DataFrame | None = None,
    calibration: IntervalCalibration | None = None,
) -> TrainedModel:
    """The model to log; servable when `recent_closes` (daily closes, the input example) and the
    `calibration` from tonight's held-out residuals are given."""
    from forecasting.windows import make_windows

    if forecaster.model is None or forecaster.metadata is None:
        raise RuntimeError(f"{forecaster.name} was scored but holds no trained model")
    config = forecaster.metadata.config
    window = make_windows(
        weeks,
        backtest.held_out_weeks[:1],
        window_weeks=config.window_weeks,
        normalisation=config.normalisation,
    )
    # The signature comes from arrays we already have: no extra forward pass through the model.
    # The output is relative to the window's last close, as the network predicts it.
    output = scored.predictions[:1] / window.base_closes[:, None] - 1.0
    return TrainedModel(
        keras_model=forecaster.model,
        metadata={k: str(v) for k, v in forecaster.metadata.to_dict().items()},
        input_example=window.inputs.astype("float32"),
        output_example=output.astype("float32"),
        forecaster=forecaster if calibration is not None and recent_closes is not None else None,
        calibration=calibration,
        recent_closes=recent_closes,
    )


def run_params(
    description: Mapping[str, object],
    *,
    role: ModelRole,
    as_of: str,
    fingerprint: str,
    backtest: BacktestResult,
    holdout_weeks: int,
    champion_version: int | None,
) -> dict[str, object]:
    """A candidate run's params: the model's own description (nested values as JSON), the data
    it saw and the held-out span; the champion's run also names its registry version."""
    held_out = backtest.held_out_weeks
    params: dict[str, object] = {
        k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
        for k, v in description.items()
    }
    params.update(
        {
            "as_of": as_of,
            "data_fingerprint": fingerprint,
            "held_out_first_week": held_out[0].date().isoformat(),
            "held_out_last_week": held_out[-1].date().isoformat(),
            "holdout_weeks": holdout_weeks,
        }
    )
    if role == "champion":
        params["champion_version"] = champion_version
    return params


def predictions_csv(backtest: BacktestResult, predictions: np.ndarray) -> str:
    """One line per held-out day: week, date, actual, predicted and error in dollars."""
    import pandas as pd

    rows = []
    for week, actual_row, predicted_row in zip(
        backtest.held_out_weeks, backtest.actuals, predictions, strict=True
    ):
        for day in range(7):
            date = (week + pd.Timedelta(days=day)).date().isoformat()
            rows.append(
                f"{week.date().isoformat()},{date},{actual_row[day]:.6f},"
                f"{predicted_row[day]:.6f},{predicted_row[day] - actual_row[day]:.6f}"
            )
    return "week_start,date,actual_close,predicted_close,error\n" + "\n".join(rows) + "\n"


def plot_forecast_vs_actual(
    path: Path,
    name: str,
    backtest: BacktestResult,
    predictions: np.ndarray,
    calibration: IntervalCalibration | None = None,
) -> None:
    import matplotlib.dates
    import pandas as pd
    from matplotlib.figure import Figure  # not pyplot (see the module's doc)

    days = [w + pd.Timedelta(days=d) for w in backtest.held_out_weeks for d in range(7)]
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    if calibration is not None:
        # In-sample bands (calibrated on these very weeks): they show the width, not coverage.
        for level, alpha in ((0.95, 0.15), (0.80, 0.3)):
            lower, upper = calibration.bounds(predictions, level, calibration.scales or 1.0)
            ax.fill_between(
                days,
                lower.ravel(),
                upper.ravel(),
                color="tab:blue",
                alpha=alpha,
                linewidth=0,
                label=f"{level:.0%} band",
            )
    ax.plot(days, backtest.actuals.ravel(), label="actual", color="black", linewidth=1.2)
    ax.plot(days, predictions.ravel(), label=name, color="tab:blue", linewidth=1.0)
    ax.set_title(f"{name}: forecast vs actual on the held-out weeks")
    ax.set_ylabel("close (USD)")
    ax.legend()
    # Few fixed ticks: automatic date locators and tight_layout cost more than the plot.
    ax.set_xticks(days[:: max(len(days) // 6, 1)])
    ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.12)
    fig.savefig(path, dpi=72)


def log_candidate_run(
    *,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    role: ModelRole,
    scored: CandidateResult,
    backtest: BacktestResult,
    params: Mapping[str, object],
    model: TrainedModel | None,
    tags: Mapping[str, str],
    calibration: IntervalCalibration | None = None,
) -> LoggedCandidate:
    """The nested run of one scored model under the night's parent run. Tonight's candidates get
    the plot (the champion and naive only the CSV: plots cost); a trained one gets its model."""
    import mlflow

    name = scored.name
    try:
        _use_tracking_uri(tracking_uri)
        with mlflow.start_run(
            experiment_id=experiment_id,
            # The night's date in the name: every night's runs are told apart in the runs table.
            run_name=f"{name} {params.get('as_of', '')}".strip(),
            parent_run_id=parent_run_id,
            nested=True,
            # An evaluation run (scored on held-out weeks): MLflow's runs table then opens the
            # night's parent run expanded, its models and their scores in view.
            tags={
                "pricecast.role": role,
                "candidate": name,
                "mlflow.runType": "evaluation",
                **tags,
            },
        ) as run:
            client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            run_id = run.info.run_id
            if model is None:
                _log_scores(client, run_id, scored, backtest, params=params)
            else:  # params now (MLflow copies them into the model), scores once it is logged
                log_values(client, run_id, params=params)
            with tempfile.TemporaryDirectory(prefix="pricecast-") as tmp:
                folder = Path(tmp)
                (folder / PREDICTIONS_FILE).write_text(
                    predictions_csv(backtest, scored.predictions)
                )
                if calibration is not None:
                    (folder / INTERVALS_FILE).write_text(
                        json.dumps(calibration.to_dict(), indent=2)
                    )
                if role == "candidate":
                    plot_forecast_vs_actual(
                        folder / PLOT_FILE, name, backtest, scored.predictions, calibration
                    )
                # The run's own artifact location: MLflow's log_artifacts would ask for the run.
                run_artifacts(run.info.artifact_uri, tracking_uri).log_artifacts(tmp)
            if model is None:
                return LoggedCandidate(run_id=run_id)
            info = _log_model(model, params)
            _log_scores(client, run_id, scored, backtest, model_id=info.model_id)
            return LoggedCandidate(run_id=run_id, model_uri=info.model_uri, model_id=info.model_id)
    except ServiceUnavailable:
        raise
    except Exception as exc:
        raise unavailable(tracking_uri, f"logging the {name} run", exc) from exc


def _log_scores(
    client: MlflowClient,
    run_id: str,
    scored: CandidateResult,
    backtest: BacktestResult,
    *,
    params: Mapping[str, object] | None = None,
    model_id: str | None = None,
) -> None:
    """The model's scores (RMSE, MAPE, and both per held-out week, dated) in one request; with
    `model_id` also the logged model's metrics (`log_values`)."""
    log_values(
        client,
        run_id,
        params=params,
        metrics={"rmse": scored.rmse, "mape": scored.mape, "train_seconds": scored.train_seconds},
        series_dates=[w.date() for w in backtest.held_out_weeks],
        series={
            "weekly_rmse": scored.weekly_rmse.tolist(),
            "weekly_mape": scored.weekly_mape.tolist(),
        },
        model_id=model_id,
    )


def run_artifacts(artifact_uri: str, tracking_uri: str) -> ArtifactRepository:
    """The artifact store of a run whose artifact URI is known (MLflow's own client looks the
    run up on the tracking server first, once per run and process)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def _log_model(model: TrainedModel, params: Mapping[str, object]) -> ModelInfo:
    """The servable pyfunc when the model carries its calibration; else the bare Keras model."""
    if model.forecaster is None or model.calibration is None or model.recent_closes is None:
        return _log_keras(model, params)
    from flows.serving.log import log_servable_model

    return log_servable_model(
        model.forecaster,
        model.calibration,
        recent_closes=model.recent_closes,
        name=MODEL_NAME,
    )


def _log_keras(model: TrainedModel, params: Mapping[str, object]) -> ModelInfo:
    import mlflow.keras
    from mlflow.models import infer_signature

    # Explicit requirements: MLflow would otherwise start a subprocess to infer them (seconds).
    requirements = mlflow.keras.get_default_pip_requirements()
    return mlflow.keras.log_model(
        model.keras_model,
        name=MODEL_NAME,
        signature=infer_signature(model.input_example, model.output_example),
        pip_requirements=requirements,
        metadata=dict(model.metadata),
        params={k: param_value(v) for k, v in params.items()},
    )


def load_keras_model(tracking_uri: str, model_uri: str) -> keras.Model:
    """The Keras model behind a registry URI (e.g. models:/pricecast-BTC-USD/3)."""
    return load_registered_model(tracking_uri, model_uri)[0]


def load_registered_model(
    tracking_uri: str, model_uri: str
) -> tuple[keras.Model, IntervalCalibration | None]:
    """The Keras network behind a registry URI and the interval calibration logged with it.

    A servable pyfunc version (`flows.serving`) gives both; a version logged the old way, as a
    bare Keras model, gives the network and None."""
    import mlflow.keras

    from flows.serving.log import load_logged_forecaster
    from forecasting.model import NETWORK_LOCK
    from pricecast.errors import DataError

    try:
        _use_tracking_uri(tracking_uri)
        try:
            logged = load_logged_forecaster(model_uri, tracking_uri=tracking_uri)
        except DataError:  # not a servable pyfunc: a plain Keras model logged before them
            with tempfile.TemporaryDirectory(prefix="pricecast-keras-") as scratch:
                local = mlflow.artifacts.download_artifacts(model_uri, dst_path=scratch)
                with NETWORK_LOCK:  # builds layers: not while another thread seeds and builds
                    model: keras.Model = mlflow.keras.load_model(local)
            return model, None
        assert logged.forecaster.model is not None
        return logged.forecaster.model, logged.calibration
    except Exception as exc:
        raise unavailable(tracking_uri, f"loading {model_uri}", exc) from exc


def _use_tracking_uri(tracking_uri: str) -> None:
    import mlflow

    configure_http_defaults()
    # Set, never restored: the child's threads (logging a run, loading the champion) share this
    # process-wide URI, and restoring it in one thread pulls it from under the other.
    mlflow.set_tracking_uri(tracking_uri)


COMPARISON_PLOT_FILE = "forecasts_vs_actual.png"


def plot_comparison(path: Path, passes: Sequence[BacktestResult]) -> None:
    """Every scored model's forecast against the actual closes on the held-out weeks, in one
    picture (the night's parent run): the passes share their weeks and actuals."""
    import matplotlib.dates
    import pandas as pd
    from matplotlib.figure import Figure  # not pyplot (see the module's doc)

    first = passes[0]
    days = [w + pd.Timedelta(days=d) for w in first.held_out_weeks for d in range(7)]
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    ax.plot(days, first.actuals.ravel(), label="actual", color="black", linewidth=1.6)
    for result in passes:
        for scored in result.candidates:
            dashed = scored.name in {"naive", "champion"}
            ax.plot(
                days,
                scored.predictions.ravel(),
                label=f"{scored.name} (MAPE {scored.mape:.2f} %)",
                linewidth=1.0,
                linestyle="--" if dashed else "-",
            )
    ax.set_title("Forecasts vs actual closes on the held-out weeks")
    ax.set_ylabel("close (USD)")
    ax.legend(fontsize="small")
    ax.set_xticks(days[:: max(len(days) // 6, 1)])
    ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d"))
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.12)
    fig.savefig(path, dpi=72)


def log_comparison_chart(
    tracking_uri: str, parent_run_id: str, passes: Sequence[BacktestResult]
) -> None:
    """`plot_comparison` as an artifact of the night's parent run."""
    import mlflow

    if not passes:
        return
    try:
        configure_http_defaults()
        with tempfile.TemporaryDirectory(prefix="pricecast-") as tmp:
            path = Path(tmp) / COMPARISON_PLOT_FILE
            plot_comparison(path, passes)
            mlflow.MlflowClient(tracking_uri=tracking_uri).log_artifact(parent_run_id, str(path))
    except Exception as exc:
        raise unavailable(tracking_uri, "logging the comparison chart", exc) from exc
