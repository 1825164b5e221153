"""`Tracker` against a real local MLflow store: a SQLite file and a local artifact root."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.tracking.tracker import (
    CHAMPION_ALIAS,
    MAX_PARAM_CHARS,
    METADATA_FILE,
    Tracker,
    data_fingerprint,
    experiment_name,
    model_name,
)
from pricecast.errors import ServiceUnavailable
from tests.flows.tracking.mlflow_store import logged_model_dir

AS_OF = dt.date(2020, 9, 6)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    """One store for the module (creating its schema takes seconds); each test its own ticker."""
    root = tmp_path_factory.mktemp("mlflow")
    yield Tracker(f"sqlite:///{root / 'store' / 'mlflow.db'}", artifact_root=root / "artifacts")


@pytest.fixture
def client(store: Tracker) -> MlflowClient:
    return MlflowClient(tracking_uri=store.tracking_uri)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_experiment_is_created_once_with_artifacts_under_the_root(
    store: Tracker, client: MlflowClient
) -> None:
    experiment_id = store.ensure_experiment("EXP")

    assert store.ensure_experiment("EXP") == experiment_id
    found = client.get_experiment(experiment_id)
    assert found.name == experiment_name("EXP") == "pricecast-EXP"
    assert found.tags["ticker"] == "EXP"
    assert store.artifact_root is not None
    assert found.artifact_location == (store.artifact_root / "EXP").resolve().as_uri()
    # A deleted experiment comes back rather than failing the night.
    client.delete_experiment(experiment_id)
    assert store.ensure_experiment("EXP") == experiment_id
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_a_parent_run_carries_the_nights_tags_params_and_end_status(
    store: Tracker, client: MlflowClient
) -> None:
    experiment_id = store.ensure_experiment("RUN")
    run_id = store.start_parent_run(
        experiment_id=experiment_id,
        ticker="RUN",
        as_of=AS_OF,
        flow_run_id="flow-1",
        params={"holdout_weeks": 3, "force": False, "train_reason": "x" * (MAX_PARAM_CHARS + 10)},
    )

    run = client.get_run(run_id)
    assert run.info.run_name == "nightly RUN 2020-09-06"
    assert run.info.status == "RUNNING"
    assert {k: run.data.tags[k] for k in ("ticker", "as_of", "prefect.flow_run_id")} == {
        "ticker": "RUN",
        "as_of": "2020-09-06",
        "prefect.flow_run_id": "flow-1",
    }
    assert run.data.tags["pricecast.role"] == "nightly"
    assert run.data.params["holdout_weeks"] == "3"
    assert run.data.params["force"] == "False"
    assert len(run.data.params["train_reason"]) == MAX_PARAM_CHARS
    assert run.data.params["train_reason"].endswith("...")

    store.log_summary(run_id, metrics={"fresh_mape": 2.5}, tags={"decision": "keep"})
    store.end_run(run_id)
    finished = client.get_run(run_id)
    assert finished.data.metrics["fresh_mape"] == 2.5
    assert finished.data.tags["decision"] == "keep"
    assert finished.info.status == "FINISHED"

    failed_id = store.start_parent_run(
        experiment_id=experiment_id, ticker="RUN", as_of=AS_OF, flow_run_id=None, params={}
    )
    store.end_run(failed_id, failed=True)
    assert client.get_run(failed_id).info.status == "FAILED"
    assert client.get_run(failed_id).data.tags["prefect.flow_run_id"] == ""


def test_versions_and_the_champion_alias(
    store: Tracker, client: MlflowClient, tmp_path: Path
) -> None:
    ticker = "REG"
    assert store.champion(ticker) is None  # no registered model yet
    experiment_id = store.ensure_experiment(ticker)
    registered = []
    for mape in ("3.5", "2.5"):
        run_id, model_uri = logged_model_dir(store, experiment_id, tmp_path)
        version = store.register_version(
            ticker,
            model_uri=model_uri,
            run_id=run_id,
            model_id=None,
            metadata={"window_weeks": 40, "strategy": "fresh"},
            tags={"mape": mape, "decision": "pending"},
        )
        registered.append((version, run_id))
    assert [v for v, _ in registered] == [1, 2]
    assert store.champion(ticker) is None  # versions exist, no alias yet

    store.set_champion(ticker, 1)
    champion = store.champion(ticker)
    assert champion is not None
    assert (champion.name, champion.version, champion.run_id) == (
        model_name(ticker),
        1,
        registered[0][1],
    )
    assert champion.model_uri == "models:/pricecast-REG/1"
    assert champion.metadata == {"window_weeks": "40", "strategy": "fresh"}
    # The metadata is one JSON artifact on the version's run, not a tag per value.
    assert champion.tags == {"mape": "3.5", "decision": "pending", "metadata": METADATA_FILE}
    assert METADATA_FILE in {a.path for a in client.list_artifacts(registered[0][1])}

    store.set_champion(ticker, 2)
    store.tag_version(ticker, 2, {"decision": "promoted"})
    champion = store.champion(ticker)
    assert champion is not None and champion.version == 2
    assert champion.tags["decision"] == "promoted"
    versions = store.versions(ticker)
    assert [v.version for v in versions] == [2, 1]
    assert versions[1].tags["decision"] == "pending"
    info = store.version(ticker, 2)
    assert info is not None and info.aliases == (CHAMPION_ALIAS,)
    assert info.run_id == registered[1][1]
    assert store.version(ticker, 99) is None

    store.clear_champion(ticker)
    assert store.champion(ticker) is None


def test_an_unreachable_server_is_service_unavailable_with_the_password_masked() -> None:
    uri = f"http://ops:s3cret@127.0.0.1:{_free_port()}"
    started = time.monotonic()

    with pytest.raises(ServiceUnavailable) as raised:
        Tracker(uri).ensure_experiment("DOWN")

    message = str(raised.value)
    assert "s3cret" not in message
    assert "MLflow tracking server at http://ops:***@127.0.0.1:" in message
    assert "is not reachable (" in message and "Connection refused" in message
    assert time.monotonic() - started < 15  # no minutes of HTTP retries


class _HealthOnly(BaseHTTPRequestHandler):
    """A server that is up (its health endpoint answers) but knows no MLflow API."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_server_with_credentials_in_its_uri_passes_the_health_probe() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://ops:s3cret@127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ServiceUnavailable) as raised:
            Tracker(uri).ensure_experiment("UP")
    finally:
        server.shutdown()
        server.server_close()

    message = str(raised.value)
    # Past the probe: the failure is the API call, with the password masked.
    assert "failed while opening experiment 'pricecast-UP'" in message
    assert "s3cret" not in message and "ops:***@127.0.0.1" in message


def test_any_mlflow_failure_names_what_was_done_with_secrets_masked() -> None:
    tracker = Tracker("postgresql+psycopg2://ops:s3cret@db.internal/mlflow")

    def fails() -> None:
        raise RuntimeError("could not connect to postgresql://ops:s3cret@db.internal/mlflow")

    with pytest.raises(ServiceUnavailable) as raised:
        tracker.call("opening experiment 'pricecast-X'", fails)

    message = str(raised.value)
    assert "s3cret" not in message
    assert message.startswith(
        "MLflow at postgresql+psycopg2://ops:***@db.internal/mlflow failed while opening "
        "experiment 'pricecast-X': could not connect to postgresql://ops:***@db.internal/mlflow"
    )
    assert "rerun the same --as-of" in message
    assert "s3cret" not in tracker.run_link("1", "abc")
    assert "s3cret" not in Tracker("https://ops:s3cret@mlflow.example").run_link("1", "abc")


def test_the_data_fingerprint_follows_the_closes() -> None:
    closes = [(dt.date(2020, 1, 1), 100.0), (dt.date(2020, 1, 2), 101.5)]

    assert data_fingerprint(closes) == data_fingerprint(list(closes))
    assert len(data_fingerprint(closes)) == 16
    assert data_fingerprint(closes) != data_fingerprint([*closes[:1], (closes[1][0], 101.25)])


def test_links_open_the_runs_table_from_the_users_browser() -> None:
    inside = Tracker("http://ops:s3cret@mlflow:5000/")
    assert inside.experiment_link("7") == (
        "http://mlflow:5000/#/experiments/7/runs"
        "?workflowType=machine_learning&viewStateShareKey=pricecast"
    )
    public = Tracker("http://mlflow:5000", public_url="http://127.0.0.1:5000/")
    assert public.run_link("7", "abc") == (
        "http://127.0.0.1:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    assert public.version_link("BTC-USD", 3) == (
        "http://127.0.0.1:5000/#/models/pricecast-BTC-USD/versions/3"
    )
    local = Tracker("sqlite:////tmp/mlflow.db")
    assert local.experiment_link("7") is None and local.version_link("X", 1) is None


def test_the_experiment_is_a_training_experiment_with_a_runs_view(
    store: Tracker, client: MlflowClient
) -> None:
    experiment_id = store.ensure_experiment("KIND")
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")  # made before the tag

    assert store.ensure_experiment("KIND") == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.pricecast"])
    assert {"metrics.`mape`", "metrics.`rmse`", "tags.`decision`"} <= set(view["selectedColumns"])
