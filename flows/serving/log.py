"""Log a fitted LSTM as a self-contained MLflow pyfunc (network + metadata + interval calibration
+ the `forecasting` code), and get the Keras network back out of a logged version for `retrain`."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from forecasting.base import NotFittedError
from forecasting.candidates import LSTMForecaster, ModelMetadata, SavedLSTM, from_keras
from forecasting.intervals import IntervalCalibration
from forecasting.weeks import CLOSE, DATE, DAYS_PER_WEEK, validate_daily
from pricecast.errors import DataError

if TYPE_CHECKING:
    import keras
    from mlflow.models.model import ModelInfo

#: The code MLflow runs to build the model (models from code).
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")

#: What a consumer installs; pinned to the versions the model was logged with.
REQUIREMENTS: tuple[str, ...] = ("mlflow", "tensorflow", "pandas", "numpy")

_NETWORK_FILE = "network.keras"
_METADATA_FILE = "metadata.json"
_INTERVALS_FILE = "intervals.json"

_PRICECAST_STUB = '"""Only the error types `forecasting` raises, bundled with the model."""\n'


def _bundle_code(into: Path) -> list[str]:
    """One zip in `into` (`CODE_BUNDLE`) holding `forecasting/` and `pricecast/errors.py` (all
    `forecasting` imports from pricecast), for `code_paths`; `pyfunc_model.py` puts it on
    `sys.path` when MLflow loads the model. One file, not a folder: MLflow uploads a model's
    files one request each, and the package is 14 files (28 uploads a night per ticker)."""
    import forecasting
    import pricecast.errors
    from flows.serving.pyfunc_model import CODE_BUNDLE

    package = Path(forecasting.__file__).parent
    files = {f"forecasting/{source.name}": source.read_bytes() for source in package.glob("*.py")}
    files["pricecast/__init__.py"] = _PRICECAST_STUB.encode()
    files["pricecast/errors.py"] = Path(pricecast.errors.__file__).read_bytes()
    bundle = into / CODE_BUNDLE
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in sorted(files.items()):
            # A fixed time: the same code gives the same bytes whenever it is logged.
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return [str(bundle)]


def example_closes(daily: pd.DataFrame, *, window_weeks: int) -> pd.DataFrame:
    """The last `window_weeks` complete ISO weeks of `daily` (date, close), ending on a Sunday:
    the smallest valid request, logged as the model's input example."""
    frame = validate_daily(daily)
    sundays = frame.index[frame[DATE].dt.weekday == 6]
    if len(sundays) == 0:
        raise DataError("the example closes contain no Sunday, so no complete ISO week")
    example = frame.loc[: sundays[-1]].tail(window_weeks * DAYS_PER_WEEK)
    if len(example) < window_weeks * DAYS_PER_WEEK:
        raise DataError(
            f"the example closes hold {len(example)} day(s) up to the last Sunday; a "
            f"{window_weeks}-week window needs {window_weeks * DAYS_PER_WEEK}"
        )
    return example.reset_index(drop=True)


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from flows.serving.pyfunc_model import OUTPUT_COLUMNS

    inputs: list[ColSpec | TensorSpec] = [ColSpec("datetime", DATE), ColSpec("double", CLOSE)]
    outputs: list[ColSpec | TensorSpec] = [ColSpec("datetime", DATE)]
    outputs += [ColSpec("double", column) for column in OUTPUT_COLUMNS[1:]]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_servable_model(
    forecaster: LSTMForecaster,
    calibration: IntervalCalibration,
    *,
    recent_closes: pd.DataFrame,
    name: str = "model",
    registered_model_name: str | None = None,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> ModelInfo:
    """Log `forecaster` (fitted) as a pyfunc model called `name` in the active run, or in the
    run `run_id`; register it under `registered_model_name` when given.

    Artifacts: the Keras network (`network.keras`), the metadata dict (`ModelMetadata.to_dict()`)
    and the interval calibration JSON; code: `forecasting/`. The input example is the last window
    of `recent_closes`. Returns MLflow's ModelInfo (model_uri, model_id, registered version).
    """
    import mlflow

    from flows.serving.pyfunc_model import INTERVALS_ARTIFACT, METADATA_ARTIFACT, NETWORK_ARTIFACT
    from forecasting.model import save_model

    if forecaster.model is None or forecaster.metadata is None:
        raise NotFittedError(f"{forecaster.name}: fit or load the model before logging it")
    meta = forecaster.metadata
    with tempfile.TemporaryDirectory(prefix="pricecast-servable-") as scratch:
        root = Path(scratch)
        network = save_model(forecaster.model, root / _NETWORK_FILE)
        (root / _METADATA_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
        (root / _INTERVALS_FILE).write_text(json.dumps(calibration.to_dict(), indent=2))
        (root / "code").mkdir()
        arguments: dict[str, Any] = {
            "name": name,
            "python_model": str(MODEL_CODE),
            "artifacts": {
                NETWORK_ARTIFACT: str(network),
                METADATA_ARTIFACT: str(root / _METADATA_FILE),
                INTERVALS_ARTIFACT: str(root / _INTERVALS_FILE),
            },
            "code_paths": _bundle_code(root / "code"),
            "signature": _signature(),
            "input_example": example_closes(recent_closes, window_weeks=meta.config.window_weeks),
            "pip_requirements": [
                f"{package}=={package_metadata.version(package)}" for package in REQUIREMENTS
            ],
            "registered_model_name": registered_model_name,
            "metadata": meta.to_dict(),
            "params": {key: str(value) for key, value in meta.to_dict().items()},
            "tags": tags,
        }
        active = mlflow.active_run()
        with _sys_path_kept():
            if run_id is None or (active is not None and active.info.run_id == run_id):
                return _log_pyfunc(arguments)
            with mlflow.start_run(run_id=run_id, nested=active is not None):
                return _log_pyfunc(arguments)


class _SavedWithoutServingCheck:
    """`mlflow.pyfunc` as the flavor `Model.log` saves with, taking its `validate_serving_input`
    (which `mlflow.pyfunc.save_model` refuses)."""

    @staticmethod
    def save_model(**kwargs: Any) -> None:
        import mlflow.pyfunc

        kwargs.pop("validate_serving_input", None)
        mlflow.pyfunc.save_model(**kwargs)


def _log_pyfunc(arguments: dict[str, Any]) -> ModelInfo:
    """`mlflow.pyfunc.log_model(**arguments)` (models from code) without MLflow's serving-input
    check. That check loads the model just logged back and predicts its input example, ~0.17
    CPU-s a model (two a night per ticker), and on failure only logs a warning; what it would
    prove is tested instead (tests/flows/test_servable_model.py: the logged bundle loads and
    forecasts in a fresh process without the repository, and `mlflow models serve` answers)."""
    from mlflow.models import Model

    return Model.log(
        artifact_path=None,  # deprecated for `name`, but positional in Model.log
        flavor=_SavedWithoutServingCheck,
        flavor_name="pyfunc.ModelFromCode",  # what mlflow.pyfunc.log_model names code models
        validate_serving_input=False,
        **arguments,
    )


@contextlib.contextmanager
def _sys_path_kept() -> Iterator[None]:
    """`sys.path` as it was before the block. A model MLflow loads back while logging it (its
    serving-input check, skipped in `_log_pyfunc`, or a requirements inference) puts the model's
    code folder (here a temporary copy, deleted after logging) first on `sys.path` for good: a
    long-lived training process would gain one dead entry per logged model, which every failed
    import walks (MLflow tries one per HTTP request: 0.4 ms each, 1.6 ms after 20 models)."""
    before = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = before


@dataclass(frozen=True)
class LoggedForecaster:
    """A logged servable model taken apart: the forecaster (network + metadata) and its bands."""

    forecaster: SavedLSTM
    calibration: IntervalCalibration


def load_logged_forecaster(
    model_uri: str,
    *,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    name: str = "champion",
) -> LoggedForecaster:
    """Download a model logged by `log_servable_model` (`models:/NAME@champion`, `models:/m-…`,
    `runs:/…`) and rebuild its forecaster and calibration in this process."""
    import mlflow
    from mlflow.models import Model

    from flows.serving.pyfunc_model import INTERVALS_ARTIFACT, METADATA_ARTIFACT, NETWORK_ARTIFACT
    from forecasting.model import load_model

    with tempfile.TemporaryDirectory(prefix="pricecast-logged-") as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri,
                dst_path=scratch,
                tracking_uri=tracking_uri,
                registry_uri=registry_uri or tracking_uri,
            )
        )
        flavor = Model.load(str(local)).flavors.get("python_function", {})
        artifacts = flavor.get("artifacts", {})
        if not all(key in artifacts for key in (NETWORK_ARTIFACT, METADATA_ARTIFACT)):
            raise DataError(
                f"{model_uri} is not a pricecast servable model (its artifacts are "
                f"{sorted(artifacts)}); log it with flows.serving.log_servable_model"
            )

        def path_of(key: str) -> Path:
            return local / artifacts[key]["path"]

        metadata = ModelMetadata.from_dict(json.loads(path_of(METADATA_ARTIFACT).read_text()))
        calibration = IntervalCalibration.from_dict(
            json.loads(path_of(INTERVALS_ARTIFACT).read_text())
        )
        network = load_model(path_of(NETWORK_ARTIFACT))
    return LoggedForecaster(from_keras(network, metadata, name=name), calibration)


def load_keras_network(
    model_uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None
) -> keras.Model:
    """The Keras network inside a logged servable model, e.g. to fine-tune it (`retrain`)."""
    logged = load_logged_forecaster(model_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    assert logged.forecaster.model is not None
    return logged.forecaster.model
