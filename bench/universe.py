"""Universe benchmark: synthetic tickers (different seeds, ~4 years of daily prices each), one
trained night each as of the same date, on a real Prefect server and work pool: first with one
worker, then with two workers on this machine.

    .venv/bin/python bench/universe.py [--tickers 8] [--as-of 2021-12-26] [--epochs N]

Everything is real and started here: Postgres databases of their own (on PRICECAST_PG_ADMIN_URL,
default 127.0.0.1:5432), an MLflow server with served artifacts, a Prefect server and one
`pricecast worker`, all by `infra/services.py up` (what `make up` runs) under a temporary
PRICECAST_HOME; the second worker is one more `pricecast worker`. Each phase runs its own tickers
(the same seeds, other names), so both do the same work from empty stores, and starts once its
workers are online and their resident training processes ready (workers run ahead of a night).
At the end the services are stopped and the databases dropped; the temporary PRICECAST_HOME is
removed after a run that succeeded, and kept (with the services' logs) after one that failed.

Reported per phase: wall time of the universe run, tickers per minute, the sum of the nights'
training seconds, efficiency sum(train) / wall, how busy the machine's CPUs were, the steady
state (the rate after the first night is done: what a universe much larger than eight runs at
once a batch's start-up is paid), and per worker the peak RSS of its process tree (worker,
flow-run process, the worker's resident training process; sampled every 0.5 s, with each
process's share in --json) and each training process's RSS after its first and last ticker (a
worker's resident training process serves both phases: its growth is taken over both). --json
adds each night's start, end and timings (laps, the training job's parts).

Targets (issue 9): efficiency with one worker >= 0.75, two
workers >= 1.5x the throughput of one, peak <= 1.5 GB per worker, growth first -> last <= 20 %.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = (("one worker", 1), ("two workers", 2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def load_services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pricecast_services", ROOT / "infra/services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ memory of a process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(proc.name))
    return tree


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cmdline(pid: int) -> bytes | None:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return None


def _what(pid: int, cmdline: bytes | None = None) -> str:
    command = cmdline if cmdline is not None else _cmdline(pid)
    words = [a.decode(errors="replace") for a in (command or b"").split(b"\0") if a]
    return " ".join(Path(words[0]).name.split() + words[1:3])[:60] if words else str(pid)


def _parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def _residents_of(owner: int) -> list[int]:
    """Resident training processes of worker `owner` that are not its descendants (one a flow
    run started after the worker's own had exited, once that flow run ended). A fork of one
    that has not yet run its own program (MLflow's `git` calls) has its very command line: it
    is left out here as in `tree_rss` (one sample counted a second 960 MB resident so)."""
    found = []
    for proc in Path("/proc").iterdir():
        cmdline = (_cmdline(int(proc.name)) if proc.name.isdigit() else None) or b""
        if b"\0--listen\0" in cmdline and f"\0--owner\0{owner}\0".encode() in cmdline:
            parent = _parent(int(proc.name))
            if parent is None or _cmdline(parent) != cmdline:
                found.append(int(proc.name))
    return found


def tree_rss(root: int) -> dict[str, float]:
    """RSS (MB) of `root`, each of its descendants and its resident training process, by pid
    and command. A child with its parent's very command line is a fork that has not yet run its
    own program (a subprocess starting: MLflow's `git` calls in the training process): it
    shares its parent's memory, so it is left out rather than counting the parent twice."""
    tree, sizes = _children(), {}
    stack: list[tuple[int, bytes | None]] = [(root, None)]
    stack += [(pid, None) for pid in _residents_of(root)]
    while stack:
        pid, parent_cmdline = stack.pop()
        cmdline = _cmdline(pid)
        key = f"{pid} {_what(pid, cmdline)}"
        if key in sizes or (cmdline is not None and cmdline == parent_cmdline):
            continue
        sizes[key] = _rss_mb(pid)
        stack.extend((child, cmdline) for child in tree.get(pid, []))
    return sizes


def tree_rss_mb(root: int) -> float:
    """RSS of `root` and all its descendants (MB)."""
    return sum(tree_rss(root).values())


#: What a process is, for CPU seconds by kind: the first of these found in its command line.
KINDS = (
    ("flows.training", "training processes"),
    ("prefect.engine", "flow-run processes (batches)"),
    ("flows.universe.ready_engine", "flow-run processes (batches)"),
    ("mlflow", "MLflow server"),
    ("flows.universe.pool_worker", "Prefect workers"),
    ("prefect worker", "Prefect workers"),
    ("prefect", "Prefect server"),
    ("postgres", "Postgres"),
    ("bench/universe.py", "the bench (universe flow)"),
)


def _kind(pid: int) -> str:
    """The process's kind; 'other: <command>' for one not in KINDS."""
    cmdline = _cmdline(pid)
    if cmdline is None:
        return "other"
    command = cmdline.replace(b"\0", b" ").decode(errors="replace")
    found = next((kind for key, kind in KINDS if key in command), None)
    return found or f"other: {command[:50]}"


def _cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return None


@dataclass
class Sampler:
    """Peak tree RSS of each worker, and the CPU seconds of every process on the machine by
    kind, sampled in a thread (a process that lived for less than one sample is missed)."""

    workers: dict[str, int]
    peaks: dict[str, float] = field(default_factory=dict)
    #: Each worker's processes at its peak (MB by "pid command").
    at_peak: dict[str, dict[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    #: pid -> (kind, CPU seconds when first seen, when last seen); pids alive at the start begin
    #: at their CPU seconds then, new ones at 0.
    _cpu: dict[int, tuple[str, float, float]] = field(default_factory=dict)

    def _sample_cpu(self, *, first: bool = False) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            pid = int(proc.name)
            seconds = _cpu_seconds(pid)
            if seconds is None:
                continue
            known, start, _ = self._cpu.get(pid) or ("", seconds if first else 0.0, 0.0)
            # Its kind as of now (a new process is the command it forked from until it execs),
            # kept once known (an exiting process's command line reads empty).
            kind = _kind(pid)
            if kind.startswith("other") and known and not known.startswith("other"):
                kind = known
            self._cpu[pid] = (kind, start, seconds)

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds by kind; the others' below 0.5 s together as 'other'."""
        totals: dict[str, float] = {}
        for kind, start, last in self._cpu.values():
            totals[kind] = totals.get(kind, 0.0) + max(0.0, last - start)
        small = [k for k, v in totals.items() if k.startswith("other") and v < 0.5]
        rest = sum(totals.pop(k) for k in small)
        if rest:
            totals["other"] = totals.get("other", 0.0) + rest
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample_cpu()
            for name, pid in self.workers.items():
                sizes = tree_rss(pid)
                if sum(sizes.values()) > self.peaks.get(name, 0.0):
                    self.peaks[name] = sum(sizes.values())
                    self.at_peak[name] = {k: round(v) for k, v in sizes.items()}

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        self._sample_cpu(first=True)
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._sample_cpu()


# ------------------------------------------------------------------ one phase


def batches_of(universe_run_id: str) -> list[tuple[str, list[str], Any]]:
    """(batch run name, its tickers, the flow run) of the universe run's batch runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(universe_run_id)])
            )
        )
    return [(r.name, r.name.split(": ", 1)[1].split(", "), r) for r in runs if ": " in r.name]


def state_times(flow_run_id: uuid.UUID, since: dt.datetime) -> dict[str, float]:
    """When the flow run entered each of its states (Scheduled, Pending: a worker took it,
    Running: its process started the flow), in seconds after `since`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    return {
        str(state.name): round((state.timestamp - since).total_seconds(), 2)
        for state in sorted(states, key=lambda s: s.timestamp)
    }


def nights_of(database_url: str, tickers: list[str], as_of: dt.date) -> dict[str, Any]:
    """ticker -> its night's row (started_at, finished_at, timings), detached."""
    from storage.db import make_engine, session_scope
    from storage.universe import nights_as_of

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            rows = nights_as_of(session, as_of=as_of, tickers=tickers)
            return {
                t: {"started_at": r.started_at, "finished_at": r.finished_at,
                    "timings": dict(r.timings or {})}
                for t, r in rows.items()
            }  # fmt: skip
    finally:
        engine.dispose()


def training_processes(nights: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each training process (by pid) of the phase: its tickers, in order, with its RSS after
    each, and whether it was a worker's resident process."""
    processes: dict[str, dict[str, Any]] = {}
    ordered = sorted(nights.items(), key=lambda item: item[1]["finished_at"] or since_never)
    for ticker, night in ordered:
        timings = night["timings"]
        pid = str(int(timings.get("child_worker_pid", 0)))
        process = processes.setdefault(
            pid, {"resident": bool(timings.get("child_worker_resident")), "tickers": []}
        )
        process["tickers"].append((ticker, float(timings.get("child_worker_rss_mb", 0.0))))
    return processes


since_never = dt.datetime.max.replace(tzinfo=dt.UTC)


def timeline(nights: dict[str, Any], since: dt.datetime) -> list[dict[str, Any]]:
    """Each night's start and end, in seconds after the phase started, with its laps."""
    rows = []
    for ticker, night in sorted(nights.items(), key=lambda item: item[1]["started_at"]):
        end = night["finished_at"]
        rows.append({
            "ticker": ticker,
            "start": round((night["started_at"] - since).total_seconds(), 2),
            "end": round((end - since).total_seconds(), 2) if end else None,
            "timings": night["timings"],
        })  # fmt: skip
    return rows


def run_phase(
    label: str,
    tickers: list[str],
    *,
    as_of: dt.date,
    pool: str,
    workers: dict[str, int],
    database_url: str,
    epochs: int | None,
) -> dict[str, Any]:
    from flows.universe.run import run_universe

    sampler = Sampler(dict(workers))
    since = dt.datetime.now(dt.UTC)
    cpu_before = cpu_times()
    started = time.perf_counter()
    with sampler.running():
        result = run_universe(as_of=as_of, tickers=tickers, where="pool", pool=pool, epochs=epochs)
    wall = time.perf_counter() - started
    busy, total = (after - before for after, before in zip(cpu_times(), cpu_before, strict=True))
    nights = nights_of(database_url, tickers, as_of)
    batch_runs = [
        {
            "batch": name,
            "created": (run.created - since).total_seconds() if run.created else None,
            "states": state_times(run.id, since),
            "start": (run.start_time - since).total_seconds() if run.start_time else None,
            "end": (run.end_time - since).total_seconds() if run.end_time else None,
        }
        for name, _, run in batches_of(result.flow_run_id or "")
    ]
    train = sum(t.train_seconds for t in result.tickers)
    ends = sorted(n["finished_at"] for n in nights.values() if n["finished_at"])
    # Steady state: the nights after the first one to end, over the time they took; what a
    # universe much larger than the bench runs at once the batch's start-up is paid.
    steady = (ends[-1] - ends[0]).total_seconds() if len(ends) > 1 else 0.0
    steady_rate = (len(ends) - 1) / steady * 60 if steady > 0 else 0.0
    return {
        "label": label,
        "workers": len(workers),
        "tickers": len(tickers),
        "failed": result.failed,
        "errors": {t.ticker: t.error for t in result.tickers if t.error},
        "trained": sum(t.trained for t in result.tickers),
        "wall_seconds": wall,
        "tickers_per_minute": len(tickers) / wall * 60,
        "train_seconds": train,
        "efficiency": train / wall,
        "cores_busy": busy / wall,
        "cpu_busy_fraction": busy / total if total else 0.0,
        "first_night_end_seconds": (ends[0] - since).total_seconds() if ends else None,
        "steady_tickers_per_minute": steady_rate,
        "steady_efficiency": train / len(tickers) * steady_rate / 60,
        "cpu_seconds_by_kind": {k: round(v, 1) for k, v in sampler.cpu_by_kind().items()},
        "peak_rss_mb": sampler.peaks,
        "processes_at_peak": sampler.at_peak,
        "training_processes": training_processes(nights),
        "where": result.where,
        "batch_runs": batch_runs,
        # The universe night's own states: its Completed against the wall shows what its return
        # (Prefect's end of a flow run in this process) adds.
        "universe_run": state_times(uuid.UUID(result.flow_run_id), since)
        if result.flow_run_id
        else {},
        "timeline": timeline(nights, since),
    }


def report(phase: dict[str, Any]) -> list[str]:
    lines = [
        f"== {phase['label']}: {phase['tickers']} ticker(s), {phase['trained']} trained, "
        f"{phase['failed']} failed ({phase['where']})",
        f"wall {phase['wall_seconds']:.1f} s, {phase['tickers_per_minute']:.2f} tickers/min, "
        f"sum of training {phase['train_seconds']:.1f} s, efficiency sum(train)/wall "
        f"{phase['efficiency']:.2f}; the machine's CPUs {phase['cpu_busy_fraction'] * 100:.0f} % "
        f"busy ({phase['cores_busy']:.2f} of {os.cpu_count()} cores)",
    ]
    lines.append(
        f"first night done after {phase['first_night_end_seconds'] or 0:.1f} s; then "
        f"{phase['steady_tickers_per_minute']:.2f} tickers/min, efficiency "
        f"{phase['steady_efficiency']:.2f} (steady state)"
    )
    by_kind = phase["cpu_seconds_by_kind"].items()
    lines.append("CPU seconds by process kind: " + ", ".join(f"{k} {s:.1f}" for k, s in by_kind))
    for name, peak in phase["peak_rss_mb"].items():
        lines.append(f"worker {name}: peak RSS of its process tree {peak:.0f} MB")
    for pid, process in phase["training_processes"].items():
        kind = "resident training process" if process["resident"] else "training process"
        (_, first), (_, last) = process["tickers"][0], process["tickers"][-1]
        lines.append(
            f"{kind} {pid}: {len(process['tickers'])} ticker(s) this phase, RSS {first:.0f} MB "
            f"after its first, {last:.0f} MB after its last"
        )
    for ticker, error in phase["errors"].items():
        lines.append(f"  {ticker} failed: {error}")
    return lines


def start_worker(pricecast: Path, pool: str, name: str, env: dict[str, str], log: Path) -> Any:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(pricecast), "worker", "--pool", pool, "--limit", "1", "--name", name],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def wait_online(pool: str, count: int, timeout: float = 180) -> None:
    from flows.universe.fanout import pool_status

    deadline = time.monotonic() + timeout
    while pool_status(pool).online_workers < count:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"fewer than {count} worker(s) online in pool {pool} after {timeout} s"
            )
        time.sleep(1)


def wait_resident_ready(log: Path, owner: int, timeout: float = 180) -> None:
    """Wait until worker `owner`'s resident training process says in `log` that it is ready (its
    imports done, the training step traced): a phase starts with its workers warm, as a night
    does when its workers were started ahead of it; its CPU figures hold no worker's start-up."""
    deadline = time.monotonic() + timeout
    ready = f"(worker {owner}): ready on "
    while not (log.exists() and ready in log.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {owner}'s resident training process not ready after "
                             f"{timeout} s; see {log}")  # fmt: skip
        time.sleep(0.5)


def wait_engine_ready(log: Path, timeout: float = 180) -> None:
    """Wait until the worker logging to `log` has an engine process ready for its next flow run
    (`flows.universe.ready_engine`), when it keeps one: a phase starts with its workers warm."""
    from pricecast.settings import get_settings

    if not get_settings().worker_ready_engine:
        return
    deadline = time.monotonic() + timeout
    while not (log.exists() and "ready for the next flow run" in log.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise SystemExit(f"no engine process ready after {timeout} s; see {log}")
        time.sleep(0.2)


def bench_environment(epochs: int | None) -> tuple[str, Path]:
    """A scratch PRICECAST_HOME, ports, database prefix and work pool in os.environ (nothing of
    the caller's services); returns the pool's name and the scratch home."""
    home = Path(tempfile.mkdtemp(prefix="pricecast-bench-universe-"))
    home.chmod(0o755)
    pool = f"bench-{uuid.uuid4().hex[:6]}"
    os.environ.update({
        "PRICECAST_HOME": str(home),
        "PRICECAST_SERVICES_DB_PREFIX": f"pc_bench_uni_{os.getpid()}_",
        "PRICECAST_MLFLOW_PORT": str(free_port()),
        "PRICECAST_PREFECT_PORT": str(free_port()),
        "PRICECAST_WORKER_POOL": pool,
        "PREFECT_HOME": str(home / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })  # fmt: skip
    # The caller's services are not ours; the polling intervals are measured at their defaults.
    for name in (
        "PRICECAST_DATABASE_URL",
        "MLFLOW_TRACKING_URI",
        "PREFECT_API_URL",
        "PRICECAST_UNIVERSE_POLL_SECONDS",
        "PRICECAST_WORKER_QUERY_SECONDS",
        "PREFECT_WORKER_QUERY_SECONDS",
    ):
        os.environ.pop(name, None)
    if epochs is not None:
        os.environ["PRICECAST_EPOCHS"] = str(epochs)
    return pool, home


def run_phases(services: ModuleType, pool: str, *, tickers: int, as_of: dt.date,
               epochs: int | None) -> list[dict[str, Any]]:  # fmt: skip
    """Services up, the pool deployed, each phase's tickers added; one worker, then two; the
    services down and their databases dropped at the end, whatever happened."""
    from pricecast.settings import apply_environment_defaults, get_settings

    settings = get_settings()
    layout = services.layout_for(settings)
    state = None
    extra: Any = None
    phases: list[dict[str, Any]] = []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            state = services.up(settings)  # Postgres DBs, MLflow, Prefect, one worker
        for line in services.env_exports(state):
            key, value = line.removeprefix("export ").split("=", 1)
            os.environ[key] = value
        get_settings.cache_clear()
        apply_environment_defaults()
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        database_url = get_settings().resolved_database_url

        from flows.universe.deploy import deploy, resident_log
        from flows.universe.members import add_member

        with contextlib.redirect_stdout(sys.stderr):
            deploy(pool=pool)
            for phase in (1, 2):
                for index in range(1, tickers + 1):
                    add_member(f"B{phase}-T{index}", f"synthetic:{index}")
        workers = {"services worker": int(layout.pid_file("worker").read_text())}
        worker_logs = {"services worker": layout.log_file("worker")}
        pricecast = Path(sys.executable).parent / "pricecast"
        worker_env = {**os.environ, **services.worker_spec(state, settings).env}
        for phase_index, (label, count) in enumerate(PHASES, start=1):
            if count == 2:
                extra = start_worker(pricecast, pool, "bench-worker-2", worker_env,
                                     layout.logs / "worker-2.log")  # fmt: skip
                workers["second worker"] = extra.pid
                worker_logs["second worker"] = layout.logs / "worker-2.log"
            wait_online(pool, count)
            for owner in workers.values():
                wait_resident_ready(resident_log(settings), owner)
            for log in worker_logs.values():
                wait_engine_ready(log)
            names = [f"B{phase_index}-T{i}" for i in range(1, tickers + 1)]
            with contextlib.redirect_stdout(sys.stderr):
                phases.append(run_phase(label, names, as_of=as_of, pool=pool, workers=workers,
                                        database_url=database_url, epochs=epochs))  # fmt: skip
            print("\n".join(report(phases[-1])), file=sys.stderr, flush=True)
    finally:
        if extra is not None and extra.poll() is None:
            os.killpg(extra.pid, signal.SIGTERM)
            try:
                extra.wait(timeout=30)
            except subprocess.TimeoutExpired:  # as `services down` does with its worker
                print("the second worker did not stop on SIGTERM within 30 s: SIGKILL",
                      file=sys.stderr)  # fmt: skip
                os.killpg(extra.pid, signal.SIGKILL)
                extra.wait(timeout=30)
        with contextlib.redirect_stdout(sys.stderr):
            services.down(settings)
        drop_databases(services, settings, state)
    return phases


def drop_databases(services: ModuleType, settings: Any, state: Any) -> None:
    """Drop the bench's databases; also when `services up` failed after creating some of them
    (no state then: the names come from the bench's own prefix, on the reused Postgres)."""
    if state is not None:
        admin_url, names = state.pg_admin_url, list(state.databases.values())
    else:
        admin_url, names = settings.pg_admin_url, list(services.database_names(settings).values())
    try:
        engine = services._engine(admin_url)
        try:
            with engine.connect() as conn:
                for database in names:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            engine.dispose()
    except Exception as exc:  # a Postgres of its own, stopped by `down`, took them with it
        print(f"could not drop the bench's databases {names}: {exc}", file=sys.stderr)


def _growths(phases: tuple[dict[str, Any], ...]) -> list[float]:
    """Each training process's RSS growth from its first ticker to its last, over both phases
    (a worker's resident process serves both)."""
    rss: dict[str, list[float]] = {}
    for phase in phases:
        for pid, process in phase["training_processes"].items():
            rss.setdefault(pid, []).extend(mb for _, mb in process["tickers"])
    return [(mbs[-1] - mbs[0]) / mbs[0] for mbs in rss.values() if mbs and mbs[0] > 0]


def _cpu_ceiling(one: dict[str, Any]) -> str:
    """The most two workers can gain on this machine: one worker's phase already kept
    `cores_busy` of the machine's cores busy (its training, the servers, the flow runs), and
    two workers do the same work per ticker on the same cores."""
    cores = os.cpu_count() or 1
    busy = one["cores_busy"]
    per_ticker = sum(one["cpu_seconds_by_kind"].values()) / max(one["tickers"], 1)
    return (
        f"CPU ceiling: one worker kept {busy:.2f} of {cores} cores busy "
        f"({per_ticker:.1f} CPU-seconds per ticker, all processes): any number of workers on "
        f"this machine can reach at most {cores / busy:.2f}x its throughput"
    )


def summary(one: dict[str, Any], two: dict[str, Any]) -> list[str]:
    """The targets (issue 9) and the two-hour window, from the one- and two-worker phases."""
    phases = (one, two)
    speedup = two["tickers_per_minute"] / one["tickers_per_minute"]
    steady = two["steady_tickers_per_minute"] / one["steady_tickers_per_minute"]
    peak = max(max(p["peak_rss_mb"].values(), default=0) for p in phases)
    growth = max(_growths(phases), default=0.0)
    lines = [
        f"efficiency, one worker: {one['efficiency']:.2f} (target >= 0.75)",
        f"two workers / one worker throughput: {speedup:.2f}x (target >= 1.5x)",
        f"peak worker RSS: {peak:.0f} MB (target <= 1536 MB)",
        f"training process growth first -> last ticker: {growth * 100:+.1f} % (<= 20 %)",
        f"two workers / one worker, steady state: {steady:.2f}x",
        _cpu_ceiling(one),
    ]
    for label, phase in (("one worker", one), ("two workers", two)):
        start_up = phase["first_night_end_seconds"] or 0.0
        rate = phase["steady_tickers_per_minute"]
        lines.append(
            f"a two-hour window ({label}): the first night done after {start_up:.0f} s, "
            f"then {rate:.2f} tickers/min: about {1 + rate * (120 - start_up / 60):.0f} "
            f"tickers (at the bench's own rate, start-up in every {phase['tickers']}: "
            f"{phase['tickers_per_minute'] * 120:.0f})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=8, help="Tickers per phase (default 8).")
    parser.add_argument("--as-of", default="2021-12-26", help="The night (~4 years of history).")
    parser.add_argument("--epochs", type=int, default=None, help="Default: PRICECAST_EPOCHS.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # A kill (SIGTERM) still stops the services and drops the databases (run_phases' finally).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    as_of = dt.date.fromisoformat(args.as_of)
    pool, home = bench_environment(args.epochs)
    started = time.perf_counter()
    try:
        phases = run_phases(load_services(), pool, tickers=args.tickers, as_of=as_of,
                            epochs=args.epochs)  # fmt: skip
    except BaseException:
        print(f"the bench's logs are kept in {home / 'services' / 'logs'} and {home / 'work'}",
              file=sys.stderr)  # fmt: skip
        raise
    shutil.rmtree(home, ignore_errors=True)  # services stopped: only their logs and stores
    if args.json:
        print(json.dumps({"as_of": as_of.isoformat(), "phases": phases}, indent=2, default=str))
        return 0
    print(
        f"universe benchmark: {args.tickers} synthetic ticker(s) per phase, ~4 years each, as of "
        f"{as_of}, epochs {args.epochs or 'default'}; {os.cpu_count()} CPU(s); "
        f"{time.perf_counter() - started:.0f} s in all (services up/down included)"
    )
    for phase in phases:
        print()
        print("\n".join(report(phase)))
    if len(phases) == 2:
        print()
        print("\n".join(summary(*phases)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
