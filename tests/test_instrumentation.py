"""Metric feeds in-process: outcomes from the engine's signals, every final status mapped."""

from __future__ import annotations

from taskplatform import signals
from taskplatform.metrics import metrics


def _value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    metrics()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_steps_and_runs_are_counted_from_the_engine(client):
    ok = dict(handler="python.call", mode="sync", queue="io")
    before = _value("executor_task_success_count_total", **ok)
    runs_before = _value("orchestrator_flow_runs_processed_total", flow="diamond", status="succeeded")
    client.submit("diamond", {"x": 2}).wait(timeout=30)
    assert _value("executor_task_success_count_total", **ok) == before + 2
    assert _value("orchestrator_flow_runs_processed_total", flow="diamond",
                  status="succeeded") == runs_before + 1


def test_dead_lettered_and_canceled_steps_map_to_their_counters(client):
    run = client.submit("diamond", {"x": 1})
    run.wait(timeout=30)
    engine = client.engine
    dl = dict(handler="python.call", mode="sync", queue="io", error_type="TransientError")
    before = {
        "dead": _value("executor_task_dead_letter_count_total", **dl),
        "failed": _value("executor_task_failure_count_total", **dl),
        "completed_dl": _value("orchestrator_tasks_completed_total", handler="python.call",
                               status="dead_lettered"),
        "completed_cx": _value("orchestrator_tasks_completed_total", handler="transform.set",
                               status="canceled"),
        "resumed": _value("orchestrator_flow_runs_resumed_total", flow="diamond"),
    }
    # What the dead-letter and cancel paths send when they settle a step (issue 4's statuses).
    signals.step_settled.send(sender=engine, run_id=run.run_id, step_id="double", status="dead_lettered",
                              detail={"error_type": "TransientError", "queue": "io"})
    signals.step_settled.send(sender=engine, run_id=run.run_id, step_id="join", status="canceled",
                              detail={"reason": "canceled"})
    signals.run_resumed.send(sender=engine, run_id=run.run_id, steps=["double"])
    assert _value("executor_task_dead_letter_count_total", **dl) == before["dead"] + 1
    assert _value("executor_task_failure_count_total", **dl) == before["failed"] + 1
    assert _value("orchestrator_tasks_completed_total", handler="python.call",
                  status="dead_lettered") == before["completed_dl"] + 1
    assert _value("orchestrator_tasks_completed_total", handler="transform.set",
                  status="canceled") == before["completed_cx"] + 1
    assert _value("orchestrator_flow_runs_resumed_total", flow="diamond") == before["resumed"] + 1
    assert _value("taskplatform_metrics_hook_errors_total", hook="step_settled") == 0


def test_live_gauges_of_a_killed_process_are_dropped_at_scrape(tmp_path):
    """A process that dies without marking itself dead (SIGKILL) leaves its live gauge file."""
    import os
    import subprocess
    import sys

    code = (
        "from prometheus_client import Gauge, Counter\n"
        "Gauge('executor_active_tasks', 'x', ['handler', 'queue'], multiprocess_mode='livesum')"
        ".labels(handler='h', queue='q').inc()\n"
        "Counter('executor_task_success_count', 'x', ['handler']).labels(handler='h').inc()\n"
        "import os; os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=30)
    assert done.returncode == -9
    assert list(tmp_path.glob("gauge_livesum_*.db"))

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from taskplatform.metrics import _PruneDeadProcesses

    registry = CollectorRegistry()
    registry.register(_PruneDeadProcesses(str(tmp_path)))
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'executor_task_success_count_total{handler="h"} 1.0' in text  # counters stay summed in
    assert 'executor_active_tasks{handler="h",queue="q"}' not in text  # the dead one's gauge is gone
    assert not list(tmp_path.glob("gauge_livesum_*.db"))
