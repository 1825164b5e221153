"""Timing of the servable pyfunc: warm `predict` on one request (the default 40-week LSTM, loaded
by alias from a real local MLflow store) and the round trip of `mlflow models serve`.

    .venv/bin/python bench/intervals_predict.py [--requests 200] [--no-serve]

Weights do not change the cost of a forward pass, so the network is built, not trained. Targets:
predict under 50 ms warm. Uses a scratch folder it deletes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from forecasting.candidates import ModelMetadata, from_keras  # noqa: E402
from forecasting.intervals import calibrate_intervals  # noqa: E402
from forecasting.model import LSTMConfig, build_lstm  # noqa: E402
from forecasting.synthetic import synthetic_prices  # noqa: E402

MODEL = "pricecast-BENCH"


def _millis(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms"


def _timed(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # warm
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _serve_round_trips(
    root: Path, tracking_uri: str, payload: bytes, repeats: int
) -> tuple[float, list[float]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    started = time.perf_counter()
    with (root / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [f"{venv_bin}/mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion"]
            + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None or time.perf_counter() - started > 180:
                raise RuntimeError((root / "serve.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        startup = time.perf_counter() - started

        def post() -> None:
            request = urllib.request.Request(
                f"{base}/invocations", data=payload, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()

        return startup, _timed(post, repeats)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-serve", action="store_true", help="skip the HTTP round trip")
    args = parser.parse_args()

    import mlflow

    from flows.serving.log import log_servable_model
    from flows.serving.pyfunc_model import forecast_next_week

    config = LSTMConfig()
    daily = synthetic_prices(dt.date(2021, 1, 4), dt.date(2023, 6, 25), seed=1)[["date", "close"]]
    forecaster = from_keras(build_lstm(config, seed=0), ModelMetadata(config, "fresh", "BENCH"))
    rng = np.random.default_rng(0)
    predicted = np.full((19, 7), 100.0)
    calibration = calibrate_intervals(predicted * np.exp(rng.normal(0, 0.04, (19, 7))), predicted)
    request = daily.tail((config.window_weeks + 1) * 7).reset_index(drop=True)

    with tempfile.TemporaryDirectory(prefix="pricecast-bench-") as scratch:
        root = Path(scratch)
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment = client.create_experiment(MODEL, artifact_location=(root / "a").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_servable_model(
                forecaster, calibration, recent_closes=daily, registered_model_name=MODEL
            )
        client.set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))
        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        load_seconds = time.perf_counter() - started

        pyfunc = _timed(lambda: model.predict(request), args.requests)
        direct = _timed(lambda: forecast_next_week(forecaster, calibration, request), args.requests)
        figures = {
            "request": f"{len(request)} daily closes, window {config.window_weeks} weeks",
            "load_model": f"{load_seconds:.2f} s",
            "pyfunc_predict_warm": _millis(pyfunc),
            "forecast_next_week_without_mlflow": _millis(direct),
        }
        if not args.no_serve:
            rows = [[d.date().isoformat(), float(c)] for d, c in request.to_numpy()]
            payload = json.dumps({"dataframe_split": {"columns": ["date", "close"], "data": rows}})
            startup, trips = _serve_round_trips(
                root, tracking_uri, payload.encode(), min(args.requests, 100)
            )
            figures["serve_startup"] = f"{startup:.1f} s"
            figures["served_round_trip_warm"] = _millis(trips)
    for name, value in figures.items():
        print(f"{name:36s} {value}")


if __name__ == "__main__":
    main()
