"""Prometheus metrics of the executor (steps) and the orchestrator (runs), names from DESIGN.md.

``prometheus_client`` is imported lazily, on first use: under prefork it must see
``PROMETHEUS_MULTIPROC_DIR`` when it is imported, and the worker sets that (and empties the
folder) on start, before the pool forks (:func:`enable_multiprocess`). Each pool child then
writes its samples to its own files and the main process serves their sum
(:func:`registry_for_serving`). Labels are bounded: handler (the connector action), mode
(sync/async/cpu), queue, status, error_type, flow; never run or step ids.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from taskplatform import defaults

ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Steps run from milliseconds (transforms) to minutes (HTTP calls, shell commands).
STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RUN_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

STEP_LABELS = ("handler", "mode", "queue")


class Metrics:
    """Every metric the platform records, created once per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - see module doc

        self.task_duration = Histogram(
            "executor_task_duration_seconds",
            "Time a worker spent on one delivery of a step (one attempt), by outcome.",
            [*STEP_LABELS, "status"], buckets=STEP_BUCKETS_S,
        )
        self.task_success = Counter(
            "executor_task_success_count", "Steps (and standalone actions) that succeeded.", STEP_LABELS,
        )
        self.task_failure = Counter(
            "executor_task_failure_count",
            "Steps that failed for good (failed or dead-lettered), by error type.",
            [*STEP_LABELS, "error_type"],
        )
        self.task_retry = Counter(
            "executor_task_retry_count", "Attempts that failed with a transient error and were retried.",
            [*STEP_LABELS, "error_type"],
        )
        self.task_dead_letter = Counter(
            "executor_task_dead_letter_count", "Steps that reached the dead-letter queue.",
            [*STEP_LABELS, "error_type"],
        )
        self.active_tasks = Gauge(
            "executor_active_tasks", "Steps executing right now.", ["handler", "queue"],
            multiprocess_mode="livesum",
        )
        self.connector_load = Gauge(
            "executor_connector_load_seconds", "Time to import a connector module at start.",
            ["connector"], multiprocess_mode="max",
        )
        self.runs_processed = Counter(
            "orchestrator_flow_runs_processed", "Runs that reached a terminal status.", ["flow", "status"],
        )
        self.run_execution = Histogram(
            "orchestrator_run_execution_seconds", "Time from a run's submission to its end.",
            ["flow", "status"], buckets=RUN_BUCKETS_S,
        )
        self.tasks_scheduled = Counter(
            "orchestrator_tasks_scheduled", "Step messages launched (first delivery, not retries).",
            ["handler", "queue"],
        )
        self.tasks_completed = Counter(
            "orchestrator_tasks_completed", "Steps that reached a final status, by that status.",
            ["handler", "status"],
        )
        self.runs_submitted = Counter(
            "orchestrator_flow_runs_submitted", "Runs submitted (counted in the submitting process).",
            ["flow"],
        )
        self.runs_resumed = Counter(
            "orchestrator_flow_runs_resumed", "Finished runs resumed or replayed.", ["flow"],
        )
        self.hook_errors = Counter(
            "taskplatform_metrics_hook_errors", "Errors inside metric and logging signal handlers.",
            ["hook"],
        )


_metrics: Metrics | None = None
_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics (created, and prometheus_client imported, on first call)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(ENV_MULTIPROC_DIR))


def enable_multiprocess(path: Path) -> Path:
    """Switch this process (and the children it forks) to multiprocess metrics in ``path``.

    Empties ``path`` (samples of earlier runs would be summed in), sets
    ``PROMETHEUS_MULTIPROC_DIR``. Must run before prometheus_client is imported; if it was
    imported already, its value class is chosen again so later metrics still use the files.
    """
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    os.environ[ENV_MULTIPROC_DIR] = str(path)
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values  # noqa: PLC0415

        values.ValueClass = values.get_value_class()
    return path


def registry_for_serving(extra_collectors: tuple[Any, ...] = ()) -> Any:
    """The registry /metrics serves: all processes' files in multiprocess mode, else this process's."""
    from prometheus_client import REGISTRY, CollectorRegistry  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    metrics()  # so the metrics exist (and are listed) even before the first step
    if multiprocess_enabled():
        registry = CollectorRegistry()
        path = os.environ[ENV_MULTIPROC_DIR]
        registry.register(_PruneDeadProcesses(path))  # runs before the files are read
        MultiProcessCollector(registry, path=path)
    else:
        registry = REGISTRY
    for collector in extra_collectors:
        registry.register(collector)
    return registry


def prune_dead_processes(path: str | Path) -> list[int]:
    """Drop the live gauges of processes that died without saying so (a SIGKILLed pool child).

    ``worker_process_shutdown`` marks a child dead when it exits cleanly; a killed one leaves
    its ``gauge_live*_<pid>.db`` behind and ``executor_active_tasks`` would count its tasks
    forever. Returns the pids dropped.
    """
    from prometheus_client import multiprocess  # noqa: PLC0415

    dropped = []
    for file in Path(path).glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, str(path))
            dropped.append(pid)
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _PruneDeadProcesses:
    """A collector that yields nothing: it prunes dead processes' live gauges at each scrape."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Any:
        prune_dead_processes(self.path)
        return iter(())


def mark_process_dead(pid: int) -> None:
    """Drop a dead pool child's live gauges (its counters stay summed in)."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid, os.environ[ENV_MULTIPROC_DIR])


class AuditSpoolCollector:
    """``taskplatform_audit_spool_events``: audit events waiting in Redis for the database.

    It grows while the database is down or the audit writer is stuck; with Redis on
    ``noeviction`` an unbounded backlog would end in refused writes, so it is watched.
    """

    def __init__(self, store: Any, overflow_dir: Path | None = None) -> None:
        self.store = store
        self.overflow_dir = overflow_dir

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        if self.overflow_dir is not None:  # ``taskplatform_audit_overflow_bytes``: this host's
            size = sum(f.stat().st_size for f in self.overflow_dir.glob("*.jsonl")) \
                if self.overflow_dir.is_dir() else 0
            yield GaugeMetricFamily("taskplatform_audit_overflow_bytes",
                                    "Audit events this host's audit writer moved to disk while the "
                                    "database was away, not yet written (bytes).", value=size)
        try:
            n = self.store.r.llen(defaults.KEY_AUDIT_SPOOL.format(prefix=self.store.prefix))
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
            metrics().hook_errors.labels(hook="audit_spool").inc()
            return
        yield GaugeMetricFamily("taskplatform_audit_spool_events",
                                "Audit events waiting in Redis to be written to the database.", value=n)


class ActiveRunsCollector:
    """``orchestrator_active_runs``: runs pending or running among the most recent, read at scrape.

    Runs are submitted in one process and finish in another, so a gauge kept in memory would
    lie; Redis knows.
    """

    def __init__(self, store: Any, *, scan: int) -> None:
        self.store = store
        self.scan = scan

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        family = GaugeMetricFamily("orchestrator_active_runs", "Runs pending or running, by flow.",
                                   labels=["flow"])
        counts: dict[str, int] = {}
        try:
            run_ids = self.store.recent_runs(self.scan)
            pipe = self.store.r.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(self.store.key(defaults.KEY_RUN_STATE, run_id), "status", "flow")
            for status, flow in pipe.execute():
                status = status.decode() if isinstance(status, bytes) else status
                if status in ("pending", "running"):
                    name = flow.decode() if isinstance(flow, bytes) else (flow or "")
                    counts[name] = counts.get(name, 0) + 1
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is away
            metrics().hook_errors.labels(hook="active_runs").inc()
            return
        for flow, n in sorted(counts.items()):
            family.add_metric([flow], n)
        yield family
