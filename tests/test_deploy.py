"""The deployment files: docker-compose, Prometheus config and alert rules, Grafana dashboard.

`docker-compose config` and `promtool` (Debian packages docker-compose and prometheus) check
them; locally a missing tool skips, in CI (.ci/run installs both) it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.ops_support import need_binary

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "taskplatform.json"
DESIGN_METRICS = {
    "executor_task_duration_seconds", "executor_task_success_count_total",
    "executor_task_failure_count_total", "executor_task_retry_count_total",
    "executor_task_dead_letter_count_total", "executor_active_tasks",
    "executor_connector_load_seconds", "orchestrator_flow_runs_processed_total",
    "orchestrator_run_execution_seconds", "orchestrator_active_runs", "orchestrator_tasks_scheduled_total",
    "orchestrator_tasks_completed_total",
}


def _run(*argv: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_compose_file_validates_and_has_the_whole_stack():
    _run(need_binary("docker-compose"), "-f", "docker-compose.yml", "config", "-q")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"redis", "postgres", "worker-io", "worker-cpu", "worker-plan", "flower",
                             "celery-exporter", "prometheus", "grafana"}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "--requirepass" in redis_cmd
    assert "-Q io -P threads" in services["worker-io"]["command"]
    assert "-Q cpu -P prefork" in services["worker-cpu"]["command"]
    assert "-Q plan" in services["worker-plan"]["command"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["celery-exporter"]["image"].startswith("danihodovic/celery-exporter:")


def test_prometheus_config_rules_and_rule_tests(tmp_path):
    promtool = need_binary("promtool")
    # The config names the rules by their path in the container; check a copy pointing here.
    config = (PROM / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    _run(promtool, "check", "rules", str(PROM / "alerts.yml"))
    _run(promtool, "test", "rules", "alerts_test.yml", cwd=PROM)
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"worker-io:9091", "worker-cpu:9091", "worker-plan:9091", "celery-exporter:9808"} <= targets


def test_alerts_cover_failure_rate_dlq_p95_and_retries():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "executor_task_failure_count_total" in exprs["TaskplatformHighStepFailureRate"]
    assert "executor_task_dead_letter_count_total" in exprs["TaskplatformStepsDeadLettered"]
    assert "histogram_quantile(0.95" in exprs["TaskplatformSlowSteps"]
    assert "executor_task_retry_count_total" in exprs["TaskplatformHighRetryRate"]


SCRAPE_TIME_GAUGES = {  # read from Redis, or the overflow folder, at scrape
    "orchestrator_active_runs", "taskplatform_audit_spool_events", "taskplatform_audit_overflow_bytes"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:executor|orchestrator|celery|taskplatform)_[a-z_]+)", expr))


def test_dashboard_and_rules_use_metrics_that_exist():
    from taskplatform.metrics import metrics

    exported = set()
    for metric in vars(metrics()).values():
        for family in metric.collect():
            exported.add(family.name)
            exported.update(s.name for s in family.samples)
            exported.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum"))
    assert DESIGN_METRICS <= exported | SCRAPE_TIME_GAUGES
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for r in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    ours = {n for n in used if not n.startswith("celery_")}
    assert ours <= exported | SCRAPE_TIME_GAUGES, ours - exported
    assert {p["title"] for p in dashboard["panels"] if p["type"] == "row"} == {"Flows", "Steps",
                                                                               "Workers and queues"}
