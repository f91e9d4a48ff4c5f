"""Structured logs: step fields on every line a step writes, secrets masked everywhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from taskplatform import logs, secrets
from taskplatform.embedded import RedisServer, close_connections
from taskplatform.errors import FlowFailed
from tests.ops_support import ops_worker, wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-tok-7f9d2c"

LEAKY = {
    "name": "leaky",
    "inputs": {"token": {"type": "string"}},
    "steps": {
        "prepare": {"uses": "python.call", "with": {"function": "tests.ops_funcs:chatty", "args": [2]}},
        "leak": {"uses": "python.call", "needs": ["prepare"],
                 "with": {"function": "tests.ops_funcs:leak_secret",
                          "kwargs": {"token": "${{ inputs.token }}"}}},
    },
}


def _lines(text: str) -> list[dict]:
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            out.append(json.loads(raw))
    return out


@pytest.mark.e2e
def test_failed_step_lines_carry_ids_and_no_secret_anywhere():
    from taskplatform.app import configure, create_app
    from taskplatform.client import Client
    from taskplatform.settings import Settings

    server = RedisServer().start()
    app = create_app("logs-test", set_as_current=False)
    configure(app, Settings(redis_url=server.url, flows_dir=ROOT / "flows"))
    client = Client(app, flows_dir=ROOT / "flows")
    try:
        with ops_worker(server.url, name="logs", pool="prefork", concurrency=2) as worker:
            run = client.submit(LEAKY, {"token": SECRET}, tenant_id="acme", correlation_id="req-42")
            with pytest.raises(FlowFailed):
                run.wait(timeout=60)
            # The same secret in a standalone call that raises: Celery's own error log, with
            # the message's arguments and a traceback, from the pool child.
            standalone = app.send_task("connectors.python.call", kwargs={
                "function": "tests.ops_funcs:leak_secret", "kwargs": {"token": SECRET}})
            with pytest.raises(Exception, match="refused"):
                standalone.get(timeout=60, propagate=True)
            wait_until(lambda: "raised unexpected" in worker.log_text(), timeout_s=30,
                       what="Celery's failure log line")
        text = worker.log_text()
    finally:
        close_connections(app)
        server.stop()

    assert SECRET not in text
    assert "token ***" in text  # it was there, and masked
    lines = _lines(text)
    step_lines = [e for e in lines if e.get("run_id") == run.run_id and e.get("step_id") == "leak"]
    levels = {e["level"] for e in step_lines}
    assert {"WARNING", "ERROR"} <= levels, step_lines  # the step's own warning and its failure
    for entry in step_lines:
        assert entry["flow"] == "leaky"
        assert entry["tenant_id"] == "acme" and entry["correlation_id"] == "req-42"
        assert entry["attempt"] == 1
    failure = [e for e in step_lines if e["level"] == "ERROR"]
    assert any("dead-lettered" in e["message"] and "on attempt 1" in e["message"] for e in failure)
    for entry in (e for e in lines if e.get("run_id")):
        assert set(logs.CONTEXT_FIELDS) <= set(entry), entry
    prepare = [e for e in lines if e.get("step_id") == "prepare" and "chatty line" in e["message"]]
    assert len(prepare) == 2 and all(e["run_id"] == run.run_id for e in prepare)
    celery_error = [e for e in lines if "raised unexpected" in e.get("message", "")]
    assert celery_error and "exc" in celery_error[0] and "***" in celery_error[0]["message"]


def _record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("tests", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_json_formatter_adds_step_fields_and_masks():
    secrets.register("pa55word-xyz")
    try:
        with logs.step_context(run_id="r1", step_id="s1", flow="f", tenant_id="t",
                               correlation_id="c"):
            logs.set_attempt(3)
            try:
                raise RuntimeError("bad pa55word-xyz")
            except RuntimeError:
                import sys

                line = logs.JsonFormatter().format(_record("login with %s", "pa55word-xyz",
                                                           exc_info=sys.exc_info()))
        entry = json.loads(line)
        assert entry["message"] == "login with ***"
        assert (entry["run_id"], entry["step_id"], entry["flow"], entry["attempt"]) == ("r1", "s1", "f", 3)
        assert entry["tenant_id"] == "t" and entry["correlation_id"] == "c"
        assert "RuntimeError: bad ***" in entry["exc"] and "pa55word" not in line
        outside = json.loads(logs.JsonFormatter().format(_record("plain")))
        assert "run_id" not in outside
    finally:
        secrets.forget_all()


def test_text_formatter_is_readable_and_masked():
    secrets.register("pa55word-xyz")
    try:
        with logs.step_context(run_id="r1", step_id="s1", flow="f"):
            line = logs.TextFormatter().format(_record("token %s", "pa55word-xyz"))
        assert "[flow=f run_id=r1 step_id=s1]" in line and line.endswith("token ***")
        assert not line.startswith("{")
    finally:
        secrets.forget_all()
