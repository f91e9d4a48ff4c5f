"""danihodovic's celery-exporter (its own venv) sees the tasks of a run of ours."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from taskplatform.embedded import RedisServer, close_connections
from tests.ops_support import ARTIFACTS, free_port, http_get, in_ci, ops_worker, samples, total, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exporter_installed():
    done = subprocess.run(["bash", "scripts/exporter.sh", "--install-only"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        reason = f"prometheus-exporter-celery did not install: {done.stderr.strip()[-600:]}"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def test_exporter_counts_our_tasks(exporter_installed):
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.settings import Settings

    server = RedisServer().start()
    app = create_app("exporter-test", set_as_current=False)
    configure(app, Settings(redis_url=server.url, flows_dir=ROOT / "flows"))
    port = free_port()
    exporter = None
    try:
        with ops_worker(server.url, name="exported", pool="threads", concurrency=4) as worker:
            log = open(ARTIFACTS / "celery-exporter.log", "wb")  # noqa: SIM115
            exporter = subprocess.Popen(
                ["bash", "scripts/exporter.sh", "--host", "127.0.0.1", "--log-level", "INFO"],
                cwd=ROOT, env={**worker.env, "EXPORTER_PORT": str(port)}, stdout=log, stderr=log,
                start_new_session=True)
            log.close()
            url = f"http://127.0.0.1:{port}/metrics"

            def scraped():
                code, body = http_get(url)
                return samples(body.decode()) if code == 200 else None

            wait_until(lambda: (s := scraped()) and total(s, "celery_worker_up") >= 1, timeout_s=90,
                       what="the exporter to see our worker (test-artifacts/celery-exporter.log)")
            client = Client(app, flows_dir=ROOT / "flows")
            runs = [client.submit("diamond", {"x": i}) for i in range(3)]
            for run in runs:
                run.wait(timeout=60)

            def counted():
                s = scraped()
                return s and total(s, "celery_task_succeeded_total", name="connectors.python.call") == 6 \
                    and total(s, "celery_task_succeeded_total", name="connectors.transform.set") == 6 and s

            parsed = wait_until(counted, timeout_s=30, what="the exporter to count the runs' tasks")
            (ARTIFACTS / "celery-exporter-metrics.txt").write_text(http_get(url)[1].decode())
            assert total(parsed, "celery_task_received_total", name="connectors.python.call") == 6
            assert total(parsed, "celery_task_failed_total") == 0
    finally:
        if exporter is not None:
            os.killpg(exporter.pid, 15)
            exporter.wait(15)
        close_connections(app)
        server.stop()
