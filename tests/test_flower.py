"""Flower with our app, behind basic auth, seen through headless Debian Chromium.

Starts a `celery worker` and `celery -A taskplatform flower`, runs a flow, opens Flower's
workers and tasks pages in Chromium (Debian's `chromium` and `chromedriver`, never a
downloaded browser) and keeps screenshots in test-artifacts/.
"""

from __future__ import annotations

import base64
import html
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taskplatform.embedded import RedisServer, close_connections
from tests.ops_support import ARTIFACTS, free_port, http_get, need_binary, ops_worker, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "admin", "flower-test-pw"
SECRET = "sk-live-4242-flower"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")


def _browser(profile: Path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = need_binary("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(need_binary("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    # Basic auth for every request the pages make (their tables load over XHR).
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": AUTH})
    return driver


def test_flower_shows_worker_and_flow_tasks(tmp_path):
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.settings import Settings

    need_binary("chromium")
    server = RedisServer().start()
    app = create_app("flower-test", set_as_current=False)
    configure(app, Settings(redis_url=server.url, flows_dir=ROOT / "flows"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = driver = None
    worker_name = f"flowertest@{socket.gethostname()}"
    try:
        with ops_worker(server.url, name="flowertest", pool="threads", concurrency=4) as worker:
            log = open(ARTIFACTS / "flower.log", "wb")  # noqa: SIM115
            flower = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "taskplatform", "flower", f"--port={port}",
                 "--address=127.0.0.1", f"--basic-auth={USER}:{PASSWORD}"],
                cwd=ROOT, env=worker.env, stdout=log, stderr=log, start_new_session=True)
            log.close()
            wait_until(lambda: http_get(f"{base}/healthcheck")[0] == 200, timeout_s=60,
                       what="Flower to answer (see test-artifacts/flower.log)")
            assert http_get(f"{base}/api/workers")[0] == 401  # auth is on
            wait_until(lambda: worker_name in json.loads(
                http_get(f"{base}/api/workers?refresh=1", headers=AUTH, timeout_s=15)[1] or b"{}"),
                timeout_s=60, what="Flower to list the worker")

            run = Client(app, flows_dir=ROOT / "flows").submit("diamond", {"x": 4})
            assert run.wait(timeout=60) == {"double": 8, "square": 16}

            def flow_tasks():
                tasks = json.loads(http_get(f"{base}/api/tasks", headers=AUTH)[1])
                mine = [t for t in tasks.values() if f"run={run.run_id}" in (t.get("args") or "")]
                return len(mine) == 4 and all(t["state"] == "SUCCESS" for t in mine) and mine

            mine = wait_until(flow_tasks, timeout_s=30, what="Flower to see the run's 4 tasks")
            # A standalone call carries its inputs as kwargs: Flower's pages show their keys only.
            standalone = app.send_task("connectors.transform.set",
                                       kwargs={"values": {"api_key": SECRET}})
            standalone.get(timeout=30)
            assert {t["name"] for t in mine} == {"connectors.transform.set", "connectors.python.call"}
            assert all(t["args"].startswith("flow=diamond step=") for t in mine)

            driver = _browser(tmp_path / "chromium-profile")
            driver.get(f"{base}/workers")
            wait_until(lambda: worker_name in driver.page_source, timeout_s=30,
                       what="the workers page to list the worker")
            driver.save_screenshot(str(ARTIFACTS / "flower-workers.png"))

            driver.get(f"{base}/tasks")
            try:
                wait_until(lambda: driver.page_source.count(f"run={run.run_id}") >= 4, timeout_s=30,
                           what="the tasks page to list the run's tasks")
            finally:
                (ARTIFACTS / "flower-tasks.html").write_text(driver.page_source)
                driver.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))
            page = driver.page_source
            assert "connectors.python.call" in page and "step=double" in page and "step=join" in page
            driver.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))
            assert SECRET not in page

            driver.get(f"{base}/task/{standalone.id}")
            wait_until(lambda: "connectors.transform.set" in driver.page_source, timeout_s=30,
                       what="the task page of the standalone call")
            assert "'values': ..." in html.unescape(driver.page_source)
            assert SECRET not in driver.page_source
            driver.save_screenshot(str(ARTIFACTS / "flower-task-standalone.png"))
    finally:
        if driver is not None:
            driver.quit()
        if flower is not None:
            flower.terminate()
            try:
                flower.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(flower.pid, 9)
                flower.wait(5)
        close_connections(app)
        server.stop()
    assert (ARTIFACTS / "flower-tasks.png").stat().st_size > 10_000
