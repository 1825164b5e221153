"""Prefect flows, thin tasks, MLflow tracking/registry and the `pricecast` CLI: the wiring layer."""
