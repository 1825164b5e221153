"""Helpers for tests on a real local MLflow store: model versions without training a model."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from flows.tracking.tracker import Tracker


def logged_model_dir(tracker: Tracker, experiment_id: str, folder: Path) -> tuple[str, str]:
    """A finished run with a `model/` artifact folder: (run id, model URI to register)."""
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.create_run(experiment_id)
    model = folder / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run.info.run_id, str(model), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id, f"{run.info.artifact_uri}/model"


def register_versions(tracker: Tracker, ticker: str, count: int, folder: Path) -> list[int]:
    """`count` new versions of the ticker's registered model, tagged decision=pending."""
    experiment_id = tracker.ensure_experiment(ticker)
    versions = []
    for _ in range(count):
        run_id, model_uri = logged_model_dir(tracker, experiment_id, folder)
        versions.append(
            tracker.register_version(
                ticker,
                model_uri=model_uri,
                run_id=run_id,
                model_id=None,
                metadata={"window_weeks": 40},
                tags={"mape": "2.500000", "decision": "pending"},
            )
        )
    return versions
