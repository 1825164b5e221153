"""MLflow for the flow process: one experiment and one registered model per ticker, a parent run
per night, and the registry alias `champion` that marks what serves (no TensorFlow needed here).
What a night's nested candidate run contains lives in `flows.tracking.candidate_run`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

from pricecast.errors import ServiceUnavailable
from pricecast.urls import mask_secrets, mask_url

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION_ALIAS = "champion"
#: Model-version tags that held the model's own metadata before it moved to METADATA_FILE (read
#: for versions registered then).
META_PREFIX = "meta."
#: The model's own metadata (window, normalisation, cutoff, ...) as one JSON artifact on the run
#: behind each registered version.
METADATA_FILE = "model_metadata.json"
#: MLflow 3 opens an experiment marked as model training on its runs table, not on the GenAI
#: overview (traces, tokens, cost).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
#: A view of the runs table stored on the experiment, opened by `?viewStateShareKey=pricecast`:
#: the scores and the decision as columns, charts against the date (MLflow's shared views).
RUNS_VIEW_KEY = "pricecast"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW = {
    "selectedColumns": [
        "metrics.`mape`",
        "metrics.`rmse`",
        "tags.`decision`",
    ],
    # Charts against wall time: per-week metrics carry their week's date as timestamp.
    "globalLineChartConfig": {
        "xAxisKey": "time",
        "lineSmoothness": 0,
        "selectedXAxisMetricKey": "",
    },
}
HINT = "start it (make up) or fix MLFLOW_TRACKING_URI"
#: MLflow refuses longer param values (MAX_PARAM_VAL_LENGTH).
MAX_PARAM_CHARS = 6000
T = TypeVar("T")


def model_name(ticker: str) -> str:
    """The registered model of a ticker, e.g. 'pricecast-BTC-USD'."""
    return f"pricecast-{ticker}"


def experiment_name(ticker: str) -> str:
    return f"pricecast-{ticker}"


def data_fingerprint(closes: Sequence[tuple[dt.date, float]]) -> str:
    """A short hash of the (date, close) pairs a model saw: same input data -> same value."""
    digest = hashlib.sha256()
    for day, close in closes:
        digest.update(f"{day.isoformat()}={float(close)!r};".encode())
    return digest.hexdigest()[:16]


def is_remote(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in {"http", "https", "databricks"}


def browser_url(url: str) -> str:
    """`url` as a link for a person's browser: no credentials (the browser asks), no trailing
    slash."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's page, in MLflow 3's model-training layout (not the GenAI one)."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table (not MLflow 3's GenAI overview), in pricecast's view."""
    return (
        f"{ui}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"
    )


def version_url(ui: str, ticker: str, version: int) -> str:
    return f"{ui}/#/models/{model_name(ticker)}/versions/{version}"


def model_description(ticker: str, champion: int | None) -> str:
    text = f"Weekly forecaster for {ticker}."
    if champion is None:
        return text + " No @champion: naive serves the forecasts."
    return text + f" @{CHAMPION_ALIAS} is version {champion} (see its description)."


def experiment_tags(ticker: str) -> dict[str, str]:
    """What every pricecast experiment carries: its ticker, its kind, the runs-table view."""
    return {
        "ticker": ticker,
        EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT,
        RUNS_VIEW_TAG: json.dumps(RUNS_VIEW, sort_keys=True),
    }


def configure_http_defaults(retries: int = 2, timeout_seconds: int = 20) -> None:
    """MLflow's HTTP client retries for minutes by default; a nightly run should fail in seconds.
    Values the user exported win (MLflow reads these variables itself)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    # MLflow prints "View run ... at: <tracking URI>" with the URI's password when a run ends;
    # the night gives its own masked link instead (issue 12: no secret in any output).
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def unavailable(tracking_uri: str, what: str, exc: BaseException) -> ServiceUnavailable:
    reason = mask_secrets((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
    return ServiceUnavailable(
        f"MLflow at {mask_url(tracking_uri)} failed while {what}: {reason}; {HINT}. "
        "The champion is unchanged; rerun the same --as-of to complete the night"
    )


def health_url(tracking_uri: str) -> str:
    """The MLflow server's health endpoint, without the credentials: urllib would take
    `user:password@host` for a host name, and the endpoint needs none (MLflow's own client sends
    them with every real request)."""
    parts = urlsplit(tracking_uri)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urlunsplit(bare).rstrip("/") + "/health"


def _probe_http(tracking_uri: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast (no retries) when an MLflow server does not answer its health endpoint."""
    import urllib.error
    import urllib.request

    url = health_url(tracking_uri)
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310
            response.read(64)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceUnavailable(
            f"MLflow tracking server at {mask_url(tracking_uri)} is not reachable "
            f"({getattr(exc, 'reason', exc)}); {HINT}"
        ) from None


def param_value(value: object) -> str:
    """A param as MLflow stores it: text, cut to the longest value it accepts."""
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def log_values(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, object] | None = None,
    metrics: Mapping[str, float] | None = None,
    series: Mapping[str, Sequence[float]] | None = None,
    tags: Mapping[str, object] | None = None,
    series_dates: Sequence[dt.date] | None = None,
    model_id: str | None = None,
) -> None:
    """Params, metrics (each `series` as one value per step) and tags in one request, not one
    request per value. With `series_dates` each step is timestamped with its date (a held-out
    week's Monday), so MLflow's charts plot the series against dates ("Time" x-axis).

    With `model_id` (a model logged in this run), the values at step 0 are the logged model's
    metrics too, as MLflow links a run's metrics when it logs a model after them; logged after
    the model, they spare MLflow reading each metric's history back to link it (1 + one per
    metric requests per model)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)

    def metric(key: str, value: float, timestamp: int, step: int) -> Metric:
        linked = model_id if step == 0 else None
        return Metric(key, float(value), timestamp, step, model_id=linked)

    values = [metric(k, v, now, 0) for k, v in (metrics or {}).items()]
    for key, steps in (series or {}).items():
        values += [
            metric(key, v, _timestamp(series_dates, step, now), step)
            for step, v in enumerate(steps)
        ]
    client.log_batch(
        run_id,
        metrics=values,
        params=[Param(k, param_value(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def _timestamp(dates: Sequence[dt.date] | None, step: int, default: int) -> int:
    if dates is None or step >= len(dates):
        return default
    day = dates[step]
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


@dataclass(frozen=True)
class ChampionRef:
    """The version the `champion` alias points at, with what is needed to load and describe it."""

    name: str
    version: int
    run_id: str | None
    source: str
    metadata: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        # Pinned to the version (not the alias) so a run uses one model from start to end.
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    run_id: str | None
    tags: dict[str, str]
    created: dt.datetime
    aliases: tuple[str, ...]


def open_sqlite_store(tracking_uri: str, path: Path) -> MlflowClient:
    """A client of the SQLite store at `path`, which is created (or migrated) under an exclusive
    `fcntl` lock on `<path>.lock`: two processes opening a new store at once otherwise race on
    its schema (MLflow's "Online migration expected to match one row ... 0 found")."""
    import fcntl

    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            # The first call of each store creates its tables and runs MLflow's migrations.
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return client


class Tracker:
    """MLflow tracking and registry for the flow process (no TensorFlow needed here).

    Every MLflow failure leaves as ServiceUnavailable naming the URI and what was being done.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        artifact_root: Path | None = None,
        public_url: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        #: The MLflow UI as a person's browser reaches it (PRICECAST_MLFLOW_PUBLIC_URL), when it
        #: differs from `tracking_uri` (docker compose: http://mlflow:5000 inside).
        self.public_url = public_url
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            configure_http_defaults()
            if is_remote(self.tracking_uri):
                _probe_http(self.tracking_uri)
            if self.tracking_uri.startswith("sqlite:///"):
                path = Path(self.tracking_uri.removeprefix("sqlite:///"))
                self._client = open_sqlite_store(self.tracking_uri, path)
            else:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one MLflow call; any failure becomes ServiceUnavailable."""
        try:
            return fn()
        except ServiceUnavailable:
            raise
        except Exception as exc:  # MlflowException, requests and SQLAlchemy errors alike
            raise unavailable(self.tracking_uri, what, exc) from exc

    # --- experiments and runs ---------------------------------------------------------------

    def ensure_experiment(self, ticker: str) -> str:
        """The ticker's experiment id (created on first use, artifacts under the local root)."""
        name = experiment_name(ticker)

        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self.client.restore_experiment(found.experiment_id)
                have = dict(found.tags or {})
                for key, value in experiment_tags(ticker).items():
                    if have.get(key) != value:  # an experiment made before these tags
                        self.client.set_experiment_tag(found.experiment_id, key, value)
                return str(found.experiment_id)
            location = None
            if self.artifact_root is not None and not is_remote(self.tracking_uri):
                location = (Path(self.artifact_root) / ticker).resolve().as_uri()
            return str(
                self.client.create_experiment(
                    name, artifact_location=location, tags=experiment_tags(ticker)
                )
            )

        return self.call(f"opening experiment {name!r}", get_or_create)

    def start_parent_run(
        self,
        *,
        experiment_id: str,
        ticker: str,
        as_of: dt.date,
        flow_run_id: str | None,
        params: Mapping[str, object],
        flow_run_url: str | None = None,
    ) -> str:
        tags = {
            "ticker": ticker,
            "as_of": as_of.isoformat(),
            "prefect.flow_run_id": flow_run_id or "",
            "pricecast.role": "nightly",
        }
        if flow_run_url:
            # Back to the Prefect flow run: as a tag, and as a link in the run's description
            # (MLflow renders the `mlflow.note.content` tag as markdown on the run's page).
            tags["prefect.flow_run_url"] = flow_run_url
            tags["mlflow.note.content"] = (
                f"Nightly {ticker} as of {as_of.isoformat()}; "
                f"[its Prefect flow run]({flow_run_url})"
            )

        def create() -> str:
            run = self.client.create_run(
                experiment_id, run_name=f"nightly {ticker} {as_of.isoformat()}", tags=tags
            )
            log_values(self.client, run.info.run_id, params=params)
            return str(run.info.run_id)

        return self.call("starting the nightly run", create)

    def log_summary(
        self, run_id: str, *, metrics: Mapping[str, float], tags: Mapping[str, object]
    ) -> None:
        self.call(
            "logging the night's summary",
            lambda: log_values(self.client, run_id, metrics=metrics, tags=tags),
        )

    def end_run(self, run_id: str, *, failed: bool = False) -> None:
        status = "FAILED" if failed else "FINISHED"
        self.call("closing the nightly run", lambda: self.client.set_terminated(run_id, status))

    def close_running(self, experiment_id: str, *, parent_run_id: str | None = None) -> list[str]:
        """End as FAILED every pricecast run still RUNNING in the experiment (with
        `parent_run_id`: only that run's children); returns their ids. Under the ticker's lock
        such a run belongs to a night that died or lost the lock: nothing will close it."""
        query = "attributes.status = 'RUNNING'"
        if parent_run_id is not None:
            query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"

        def close() -> list[str]:
            closed: list[str] = []
            for run in self.client.search_runs([experiment_id], query, max_results=1000):
                if "pricecast.role" in run.data.tags:
                    self.client.set_terminated(run.info.run_id, "FAILED")
                    closed.append(str(run.info.run_id))
            return closed

        return self.call("closing runs left RUNNING", close)

    def settle_pending(self, ticker: str, *, outcome: str = "failed") -> list[int]:
        """Tag every version still `decision=pending` with `outcome`; returns their numbers.
        Under the ticker's lock, pending means the night that registered it never decided."""
        pending = [v.version for v in self.versions(ticker) if v.tags.get("decision") == "pending"]
        for version in pending:
            self.tag_version(ticker, version, {"decision": outcome})
        return pending

    # --- registry ---------------------------------------------------------------------------

    def champion(self, ticker: str) -> ChampionRef | None:
        """The version behind the `champion` alias, None if there is none (yet)."""
        name = model_name(ticker)

        def lookup() -> ChampionRef | None:
            from mlflow.exceptions import MlflowException

            try:
                version = self.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
            except MlflowException as exc:
                if exc.error_code in {
                    "RESOURCE_DOES_NOT_EXIST",
                    "NOT_FOUND",
                    "INVALID_PARAMETER_VALUE",
                }:
                    return None
                raise
            ref = _champion_ref(name, version)
            if not ref.metadata and ref.run_id and ref.tags.get("metadata") == METADATA_FILE:
                ref = replace(ref, metadata=self._read_metadata(ref.run_id))
            return ref

        return self.call(f"looking up {name}@{CHAMPION_ALIAS}", lookup)

    def _read_metadata(self, run_id: str) -> dict[str, str]:
        with tempfile.TemporaryDirectory(prefix="pricecast-meta-") as tmp:
            path = self.client.download_artifacts(run_id, METADATA_FILE, tmp)
            return {k: str(v) for k, v in json.loads(Path(path).read_text()).items()}

    def register_version(
        self,
        ticker: str,
        *,
        model_uri: str,
        run_id: str | None,
        model_id: str | None,
        metadata: Mapping[str, object],
        tags: Mapping[str, object],
    ) -> int:
        """A new version of the ticker's registered model with its scores as tags; its metadata
        goes to the run as one JSON artifact (METADATA_FILE), not dozens of tags."""
        name = model_name(ticker)
        all_tags = {k: str(v) for k, v in tags.items()}
        if metadata and run_id:
            all_tags["metadata"] = METADATA_FILE

        def register() -> int:
            from mlflow.exceptions import MlflowException

            try:
                self.client.create_registered_model(
                    name, tags={"ticker": ticker}, description=model_description(ticker, None)
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            if metadata and run_id:
                self.client.log_dict(
                    run_id, {k: str(v) for k, v in metadata.items()}, METADATA_FILE
                )
            source = model_uri
            if model_id is not None:
                # The registry resolves models:/<model_id> through the *global* tracking URI
                # (an MLflow quirk); hand it the artifact location from our own client instead.
                source = self.client.get_logged_model(model_id).artifact_location
            version = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=all_tags, model_id=model_id
            )
            return int(version.version)

        return self.call(f"registering a version of {name}", register)

    def tag_version(self, ticker: str, version: int, tags: Mapping[str, object]) -> None:
        name = model_name(ticker)

        def tag() -> None:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, str(value))

        self.call(f"tagging {name} version {version}", tag)

    def describe_version(self, ticker: str, version: int, description: str) -> None:
        """The version's description, shown in the registry's version list."""
        name = model_name(ticker)
        self.call(
            f"describing {name} version {version}",
            lambda: self.client.update_model_version(name, str(version), description=description),
        )

    def tag_runs(self, tags: Mapping[str, Mapping[str, object]]) -> None:
        """Tags on several runs: {run_id: {key: value}}."""

        def tag() -> None:
            from mlflow.entities import RunTag

            for run_id, values in tags.items():
                run_tags = [RunTag(k, str(v)) for k, v in values.items()]
                self.client.log_batch(run_id, tags=run_tags)

        self.call("tagging tonight's runs", tag)

    def set_champion(self, ticker: str, version: int) -> None:
        """Move the alias; the registered model's description (the top of its page in the
        registry, above a long list of versions) names the champion."""
        name = model_name(ticker)

        def move() -> None:
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
            self.client.update_registered_model(
                name, description=model_description(ticker, version)
            )

        self.call(f"moving {name}@{CHAMPION_ALIAS} to version {version}", move)

    def clear_champion(self, ticker: str) -> None:
        name = model_name(ticker)

        def remove() -> None:
            self.client.delete_registered_model_alias(name, CHAMPION_ALIAS)
            self.client.update_registered_model(name, description=model_description(ticker, None))

        self.call(f"removing {name}@{CHAMPION_ALIAS}", remove)

    def version(self, ticker: str, version: int) -> VersionInfo | None:
        name = model_name(ticker)

        def get() -> VersionInfo | None:
            from mlflow.exceptions import MlflowException

            try:
                found = self.client.get_model_version(name, str(version))
            except MlflowException as exc:
                if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}:
                    return None
                raise
            return _version_info(found)

        return self.call(f"reading {name} version {version}", get)

    def versions(self, ticker: str) -> list[VersionInfo]:
        """Every version of the ticker's registered model, newest first."""
        name = model_name(ticker)

        def search() -> list[VersionInfo]:
            found = self.client.search_model_versions(f"name = '{name}'")
            return sorted((_version_info(v) for v in found), key=lambda v: v.version, reverse=True)

        return self.call(f"listing versions of {name}", search)

    @property
    def ui_url(self) -> str | None:
        """The MLflow UI for a person's browser: the public URL, else a server's own; None on a
        local store (no UI unless `mlflow ui` runs on it)."""
        if self.public_url:
            return browser_url(self.public_url)
        if is_remote(self.tracking_uri):
            return browser_url(self.tracking_uri)
        return None

    def run_link(self, experiment_id: str, run_id: str) -> str:
        """Where a person finds a run: a UI link for a server, the run id otherwise."""
        base = self.ui_url
        if base is not None:
            return run_url(base, experiment_id, run_id)
        return f"run {run_id} (experiment {experiment_id}, {mask_url(self.tracking_uri)})"

    def experiment_link(self, experiment_id: str) -> str | None:
        """The experiment's runs table (not MLflow 3's GenAI overview) with the scores and the
        decision as columns; None without a UI."""
        base = self.ui_url
        return None if base is None else runs_table_url(base, experiment_id)

    def version_link(self, ticker: str, version: int) -> str | None:
        base = self.ui_url
        return None if base is None else version_url(base, ticker, version)


def _version_info(version: ModelVersion) -> VersionInfo:
    return VersionInfo(
        version=int(version.version),
        run_id=version.run_id,
        tags=dict(version.tags or {}),
        created=dt.datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, dt.UTC),
        aliases=tuple(getattr(version, "aliases", ()) or ()),
    )


def _champion_ref(name: str, version: ModelVersion) -> ChampionRef:
    tags = dict(version.tags or {})
    metadata = {
        k.removeprefix(META_PREFIX): v for k, v in tags.items() if k.startswith(META_PREFIX)
    }
    return ChampionRef(
        name=name,
        version=int(version.version),
        run_id=version.run_id,
        source=version.source or "",
        metadata=metadata,
        tags={k: v for k, v in tags.items() if not k.startswith(META_PREFIX)},
    )
