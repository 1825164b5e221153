"""The servable pyfunc: logged to a real MLflow store, registered, loaded by alias, run without the
repository, and served over HTTP by `mlflow models serve` (slow). One tiny model for the file."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.candidates import FreshLSTM, LSTMForecaster
from forecasting.intervals import IntervalCalibration, calibrate_intervals
from forecasting.model import LSTMConfig
from forecasting.synthetic import synthetic_prices
from forecasting.weeks import DAY_COLUMNS, group_iso_weeks
from tests.conftest import stop_group

MODEL = "pricecast-SYN"
CHAMPION_URI = f"models:/{MODEL}@champion"
WINDOW = 8
LAST_SUNDAY = pd.Timestamp("2022-06-26")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Logged:
    tracking_uri: str
    root: Path
    daily: pd.DataFrame
    forecaster: LSTMForecaster
    calibration: IntervalCalibration
    model_uri: str
    model_id: str


def request_until(daily: pd.DataFrame, sunday: pd.Timestamp) -> pd.DataFrame:
    """A request that starts on a Thursday (a partial first week) and ends on `sunday`."""
    upto = daily[daily["date"] <= sunday]
    return upto.tail((WINDOW + 1) * 7 + 3).reset_index(drop=True)


def expected_forecast(logged: Logged, sunday: pd.Timestamp) -> np.ndarray:
    weeks = group_iso_weeks(logged.daily)
    return logged.forecaster.predict(weeks, [sunday + pd.Timedelta(days=1)])[0]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    import mlflow

    from flows.serving.log import log_servable_model

    root = tmp_path_factory.mktemp("servable")
    daily = synthetic_prices(dt.date(2021, 1, 4), LAST_SUNDAY.date(), seed=5)[["date", "close"]]
    weeks = group_iso_weeks(daily)
    held_out = weeks.index[-6:]
    config = LSTMConfig(window_weeks=WINDOW, units=4, epochs=2, history_windows=0)
    forecaster = FreshLSTM(config, seed=0, ticker="SYN").fit(weeks, train_until=held_out[0])
    calibration = calibrate_intervals(
        weeks.loc[held_out, list(DAY_COLUMNS)].to_numpy(), forecaster.predict(weeks, held_out)
    )
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "pricecast-SYN", artifact_location=(root / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_servable_model(
            forecaster, calibration, recent_closes=daily, registered_model_name=MODEL
        )
    client.set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))
    yield Logged(tracking_uri, root, daily, forecaster, calibration, info.model_uri, info.model_id)


@pytest.fixture(scope="module")
def champion(logged: Logged):  # -> mlflow.pyfunc.PyFuncModel
    import mlflow

    return mlflow.pyfunc.load_model(CHAMPION_URI)


def test_pyfunc_equals_the_in_process_forecast(logged: Logged, champion) -> None:
    from flows.serving.pyfunc_model import OUTPUT_COLUMNS

    earlier = LAST_SUNDAY - pd.Timedelta(weeks=3)
    all_history = logged.daily[logged.daily["date"] <= earlier].reset_index(drop=True)
    for sunday, request in (
        (LAST_SUNDAY, request_until(logged.daily, LAST_SUNDAY)),
        (earlier, request_until(logged.daily, earlier)),
        (earlier, all_history),
    ):
        out = champion.predict(request)

        expected = expected_forecast(logged, sunday)
        assert list(out.columns) == list(OUTPUT_COLUMNS)
        assert list(out["date"]) == list(pd.date_range(sunday + pd.Timedelta(days=1), periods=7))
        np.testing.assert_allclose(out["close"], expected, rtol=1e-6)
        for level, suffix in ((0.80, "80"), (0.95, "95")):
            lower, upper = logged.calibration.bounds(expected, level)
            np.testing.assert_allclose(out[f"lower_{suffix}"], lower, rtol=1e-6)
            np.testing.assert_allclose(out[f"upper_{suffix}"], upper, rtol=1e-6)
        assert (out["lower_95"] <= out["lower_80"]).all()
        assert (out["lower_80"] < out["close"]).all() and (out["close"] < out["upper_80"]).all()
        assert (out["upper_80"] <= out["upper_95"]).all()


def test_signature_input_example_and_artifacts_are_logged(logged: Logged, champion) -> None:
    import mlflow

    assert logged.model_uri == f"models:/{logged.model_id}"
    assert champion.metadata.get_input_schema().input_names() == ["date", "close"]
    assert champion.metadata.get_output_schema().input_names()[-1] == "upper_95"
    example = champion.metadata.load_input_example(
        mlflow.artifacts.download_artifacts(CHAMPION_URI, dst_path=str(logged.root / "example"))
    )
    assert len(example) == WINDOW * 7 and example["date"].iloc[-1] == LAST_SUNDAY
    np.testing.assert_allclose(
        champion.predict(example)["close"], expected_forecast(logged, LAST_SUNDAY), rtol=1e-6
    )


def test_logging_leaves_sys_path_as_it_was(logged: Logged) -> None:
    """MLflow loads a model it logs back to check it, which put the model's (temporary) code
    folder on sys.path for good: a training process gained a dead entry per model it logged."""
    import mlflow

    from flows.serving.log import log_servable_model

    mlflow.set_tracking_uri(logged.tracking_uri)
    experiment = mlflow.MlflowClient(logged.tracking_uri).get_experiment_by_name(MODEL)
    assert experiment is not None
    before = list(sys.path)
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            log_servable_model(logged.forecaster, logged.calibration, recent_closes=logged.daily)
    assert sys.path == before


def _drop_row(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    return frame.drop(index=row).reset_index(drop=True)


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[row, column] = value
        return frame

    return change


def _swap(frame: pd.DataFrame) -> pd.DataFrame:
    order = list(range(len(frame)))
    order[20], order[21] = 21, 20
    return frame.iloc[order].reset_index(drop=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.tail(7 * 7).reset_index(drop=True), r"only 7 complete ISO week\(s\)"),
        (lambda f: _drop_row(f, 30), r"a gap in the closes: no close for 2022-05-22"),
        (_set("close", 10, 0.0), r"close on 2022-05-02 \(Monday\) is 0.0: closes must be > 0"),
        (_set("close", 11, -5.0), r"closes must be > 0"),
        (_set("close", 12, np.nan), r"close on 2022-05-04 \(Wednesday\) is nan, not a number"),
        (_swap, r"dates are not sorted: 2022-05-12 \(Thursday\) \(row 21\) comes after"),
        (_set("date", 40, pd.Timestamp("2022-05-31")), r"2022-05-31 \(Tuesday\) appears more"),
        (lambda f: f.head(len(f) - 2), r"end on 2022-06-24 \(Friday\), inside an ISO week"),
        (lambda f: f.drop(columns="close"), r"close"),
    ],
    ids=[
        "too-few-weeks",
        "gap",
        "zero-close",
        "negative-close",
        "missing-close",
        "unsorted",
        "duplicated",
        "ends-mid-week",
        "missing-column",
    ],
)
def test_bad_requests_are_named(
    logged: Logged, champion, damage: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message):
        champion.predict(damage(request_until(logged.daily, LAST_SUNDAY)))


def test_the_checks_hold_without_mlflow_schema_enforcement() -> None:
    from flows.serving.pyfunc_model import InvalidRecentCloses, check_recent_closes

    days = pd.date_range("2024-01-04", "2024-03-03")  # Thursday .. Sunday: 8 full weeks
    good = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "close": np.linspace(10, 20, 60)})
    checked = check_recent_closes(good, window_weeks=8)
    assert checked["date"].dtype.kind == "M" and len(checked) == 60
    with pytest.raises(InvalidRecentCloses, match=r"only 8 complete ISO week\(s\).*needs 9"):
        check_recent_closes(good, window_weeks=9)
    with pytest.raises(InvalidRecentCloses, match=r"lack column\(s\) \['date'\]"):
        check_recent_closes(good[["close"]], window_weeks=8)
    with pytest.raises(InvalidRecentCloses, match="no closes were sent"):
        check_recent_closes(good.head(0), window_weeks=8)
    with pytest.raises(InvalidRecentCloses, match=r"row 3: date 'soon' is not a date"):
        check_recent_closes(_set("date", 3, "soon")(good), window_weeks=8)
    with pytest.raises(InvalidRecentCloses, match=r"2024-01-08 \(Monday\) is 'n/a', not a number"):
        check_recent_closes(_set("close", 4, "n/a")(good.astype({"close": object})), window_weeks=8)


def test_keras_network_and_parts_come_back_for_retrain(logged: Logged) -> None:
    from flows.serving.log import load_keras_network, load_logged_forecaster

    network = load_keras_network(CHAMPION_URI, tracking_uri=logged.tracking_uri)
    assert logged.forecaster.model is not None
    for got, want in zip(network.get_weights(), logged.forecaster.model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    parts = load_logged_forecaster(logged.model_uri, tracking_uri=logged.tracking_uri)
    assert parts.forecaster.metadata == logged.forecaster.metadata
    assert parts.calibration == logged.calibration


def test_the_nightly_loads_a_pyfunc_champion_and_an_old_bare_keras_version(logged: Logged) -> None:
    """The training child's loader (`load_registered_model`): the network and its calibration
    from a servable version; the network and None from a version logged as bare Keras."""
    import mlflow
    import mlflow.keras

    from flows.tracking.candidate_run import load_registered_model

    assert logged.forecaster.model is not None
    want = logged.forecaster.model.get_weights()
    network, calibration = load_registered_model(logged.tracking_uri, CHAMPION_URI)
    assert calibration == logged.calibration
    for got, expected in zip(network.get_weights(), want, strict=True):
        np.testing.assert_array_equal(got, expected)

    client = mlflow.MlflowClient(tracking_uri=logged.tracking_uri)
    experiment = client.get_experiment_by_name("pricecast-SYN")
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        old = mlflow.keras.log_model(
            logged.forecaster.model,
            name="model",
            registered_model_name=MODEL,
            pip_requirements=mlflow.keras.get_default_pip_requirements(),
        )
    old_uri = f"models:/{MODEL}/{old.registered_model_version}"
    network, calibration = load_registered_model(logged.tracking_uri, old_uri)
    assert calibration is None
    for got, expected in zip(network.get_weights(), want, strict=True):
        np.testing.assert_array_equal(got, expected)


_OUTSIDE_REPO_SCRIPT = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flows", "storage") or name == "pricecast.settings":
            raise ImportError(f"{name} must not be needed by the served model")
        return None

sys.meta_path.insert(0, Blocked())
import mlflow, pandas as pd
local = mlflow.artifacts.download_artifacts(sys.argv[1], dst_path=sys.argv[2])
model = mlflow.pyfunc.load_model(local)
out = model.predict(pd.read_csv(sys.argv[3], parse_dates=["date"]))
import forecasting, pricecast
code = sys.modules[type(model.unwrap_python_model()).__module__].__file__
print(json.dumps({"local": local, "forecasting": forecasting.__file__,
                  "pricecast": pricecast.__file__, "code": code,
                  "close": out["close"].tolist()}))
"""


def test_the_bundle_runs_without_the_repository(logged: Logged) -> None:
    outside = logged.root / "consumer"
    outside.mkdir()
    request = outside / "closes.csv"
    request_until(logged.daily, LAST_SUNDAY).to_csv(request, index=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = logged.tracking_uri
    done = subprocess.run(
        [sys.executable, "-c", _OUTSIDE_REPO_SCRIPT, CHAMPION_URI, str(outside / "m"), request],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    local = Path(seen["local"]).resolve()
    for module in ("forecasting", "pricecast", "code"):
        path = Path(seen[module]).resolve()
        assert path.is_relative_to(local), f"{module} came from {path}, not the model at {local}"
        assert not path.is_relative_to(REPO)
    np.testing.assert_allclose(seen["close"], expected_forecast(logged, LAST_SUNDAY), rtol=1e-9)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(url: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _split_payload(frame: pd.DataFrame) -> dict[str, object]:
    rows = [[day.date().isoformat(), float(close)] for day, close in frame.to_numpy()]
    return {"dataframe_split": {"columns": ["date", "close"], "data": rows}}


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_forecast(logged: Logged, champion) -> None:
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    # `mlflow models serve --env-manager local` runs `uvicorn` through `bash -c` from PATH.
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = logged.tracking_uri
    log_file = logged.root / "serve.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [f"{venv_bin}/mlflow", "models", "serve", "-m", CHAMPION_URI]
            + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=logged.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop uvicorn's workers with it
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, f"the server exited: {log_file.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /ping answer: {log_file.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        request = request_until(logged.daily, LAST_SUNDAY)

        status, body = _post(f"{base}/invocations", _split_payload(request))

        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        local = champion.predict(request)
        assert pd.to_datetime(served["date"]).tolist() == local["date"].tolist()
        for column in local.columns[1:]:
            np.testing.assert_allclose(served[column], local[column], rtol=1e-9)

        status, body = _post(f"{base}/invocations", _split_payload(_drop_row(request, 30)))
        assert status == 400
        assert "a gap in the closes: no close for 2022-05-22" in str(body["message"])
    finally:
        stop_group(server, grace=20)
