"""`manage.py workers`: a real subprocess against real workers on a private Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskplatform.embedded import RedisServer, close_connections
from tests.ops_support import ops_worker, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent

SLOW = {
    "name": "slow-one",
    "steps": {"nap": {"uses": "python.call",
                      "with": {"function": "tests.funcs:slow_count", "args": ["nap", 6]}}},
}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "workers", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_workers_lists_queues_active_tasks_heartbeats_and_depths():
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.settings import Settings

    server = RedisServer().start()
    app = create_app("workers-test", set_as_current=False)
    configure(app, Settings(redis_url=server.url, flows_dir=ROOT / "flows"))
    client = Client(app, flows_dir=ROOT / "flows")
    try:
        with ops_worker(server.url, name="wio", pool="threads", concurrency=2, queues="io") as io, \
                ops_worker(server.url, name="wcpu", pool="prefork", concurrency=1, queues="cpu,plan"):
            for _ in range(3):  # nobody consumes the dead-letter queue
                app.send_task("connectors.transform.set", kwargs={"values": {}}, queue="dlq")
            run = client.submit(SLOW, {})
            wait_until(lambda: client.get_run(run.run_id).steps()["nap"].status == "running",
                       timeout_s=30, what="the slow step to start")
            text = _manage(io.env, "--listen", "0")
            assert text.returncode == 0, text.stderr
            assert "wio@" in text.stdout and "dlq=3" in text.stdout and "running connectors.python.call" \
                in text.stdout
            done = _manage(io.env, "--json")
            assert done.returncode == 0, done.stderr
            info = json.loads(done.stdout)
            by_name = {w["name"].split("@")[0]: w for w in info["workers"]}
            assert set(by_name) == {"wio", "wcpu"}
            assert by_name["wio"]["queues"] == ["io"] and by_name["wcpu"]["queues"] == ["cpu", "plan"]
            assert by_name["wio"]["pool"] == "thread" and by_name["wcpu"]["pool"] == "prefork"
            assert by_name["wio"]["concurrency"] == 2
            assert [t["name"] for t in by_name["wio"]["active"]] == ["connectors.python.call"]
            assert by_name["wcpu"]["active"] == []
            for w in by_name.values():
                assert w["last_heartbeat_s_ago"] is not None and w["last_heartbeat_s_ago"] < 10
            assert info["queues"]["dlq"] == 3 and info["queues"]["io"] == 0
            run.wait(timeout=30)
    finally:
        close_connections(app)
        server.stop()


def test_workers_without_redis_url_says_so(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = _manage(env)
    assert done.returncode == 4 and "REDIS_URL is not set" in done.stderr
