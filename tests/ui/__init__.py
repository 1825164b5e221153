"""Browser checks of the Prefect and MLflow UIs in headless Chromium."""
