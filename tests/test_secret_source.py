"""``${{ secrets.NAME }}``: validation, resolution in the worker, and masking everywhere."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest
from celery.signals import before_task_publish

from taskplatform import secret_source, secrets
from taskplatform.errors import FlowFailed, FlowValidationError, PermanentError
from taskplatform.validation import validate_flow


def _flow(step_with, **extra):
    return {"name": "sec", "steps": {"a": {"uses": "shell.run", "with": step_with, **extra}}}


def test_secrets_are_allowed_only_inside_with():
    validate_flow(_flow({"argv": ["echo", "${{ secrets.TOKEN }}"]}))
    with pytest.raises(FlowValidationError,
                       match=r"steps.a.when: .*secrets can only be used in a step's with"):
        validate_flow(_flow({"argv": ["true"]}, when="${{ secrets.TOKEN }}"))
    bad_out = {**_flow({"argv": ["true"]}), "outputs": {"t": "${{ secrets.TOKEN }}"}}
    with pytest.raises(FlowValidationError, match=r"outputs.t: .*secrets can only be used"):
        validate_flow(bad_out)
    with pytest.raises(FlowValidationError, match=r"name the secret"):
        validate_flow(_flow({"argv": ["echo", "${{ secrets }}"]}))
    with pytest.raises(FlowValidationError, match=r"did you mean 'secrets'"):
        validate_flow(_flow({"argv": ["echo", "${{ secret.TOKEN }}"]}))


def test_resolution_from_environment_then_file(tmp_path, monkeypatch):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"A": "from-file-a", "B": "from-file-b"}))
    monkeypatch.setenv("TASKPLATFORM_SECRET_A", "from-env-a")
    assert secret_source.resolve({"A", "B"}, secrets_file=f) == {"A": "from-env-a", "B": "from-file-b"}
    assert "from-file-b" in secrets.known()
    with pytest.raises(PermanentError, match=r"secret 'C' is not set .*TASKPLATFORM_SECRET_C.* " + str(f)):
        secret_source.resolve({"C"}, secrets_file=f)
    f.write_text("[1]")
    with pytest.raises(PermanentError, match="JSON object"):
        secret_source.resolve({"C"}, secrets_file=f)


def test_log_redaction_covers_messages_and_tracebacks(caplog):
    secrets.install_log_redaction()
    secrets.register("hunter2-log-value")
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO):
        log.info("value is %s", "hunter2-log-value")
        try:
            raise ValueError("boom hunter2-log-value")
        except ValueError:
            log.exception("failed")
    assert "hunter2-log-value" not in caplog.text
    assert "value is ***" in caplog.text and "boom ***" in caplog.text


def _write_secret(value: str) -> None:
    Path(os.environ["TASKPLATFORM_SECRETS_FILE"]).write_text(json.dumps({"TP_TOKEN": value}))


SECRET_FLOW = {
    "name": "secret-flow",
    "steps": {
        "echo": {"uses": "shell.run", "with": {"argv": ["echo", "token=${{ secrets.TP_TOKEN }}"]}},
        "leak": {"uses": "python.call", "needs": ["echo"],
                 "with": {"function": "tests.funcs:leak", "kwargs": {"token": "${{ secrets.TP_TOKEN }}"}}},
    },
    "outputs": {"echoed": "${{ steps.echo.output.stdout }}"},
}


def _rows_text(audit, run_id) -> str:
    return json.dumps(audit.run(run_id), default=str)


def test_in_process_run_masks_the_secret_everywhere(client, audit, caplog):
    value = f"tp-secret-{uuid.uuid4().hex}"
    _write_secret(value)
    published: list[str] = []

    def capture(sender=None, body=None, headers=None, **_):
        published.append(json.dumps([body, headers], default=str))

    before_task_publish.connect(capture, weak=False)
    try:
        with caplog.at_level(logging.INFO):
            run = client.submit(SECRET_FLOW)
            with pytest.raises(FlowFailed) as failed:
                run.wait(timeout=30)
    finally:
        before_task_publish.disconnect(capture)
    info = run.info()
    assert info["steps"]["echo"]["status"] == "succeeded"
    assert client.engine.store.outputs(run.run_id, ["echo"])["echo"]["stdout"] == "token=***\n"
    assert "token *** rejected" in info["steps"]["leak"]["error"]
    detail = client.engine.store.step_detail(run.run_id, "leak")
    rows = _rows_text(audit, run.run_id)
    assert "***" in rows
    for where, text in [("audit", rows), ("logs", caplog.text), ("messages", "".join(published)),
                        ("error", str(failed.value)), ("detail", json.dumps(detail)),
                        ("info", json.dumps(info))]:
        assert value not in text, f"secret found in {where}"
    assert "using token ***" in caplog.text


def test_missing_secret_fails_the_step_naming_it(client, audit):
    f = {"name": "no-secret", "steps": {"a": {"uses": "shell.run",
                                              "with": {"argv": ["echo", "${{ secrets.NOT_THERE }}"]}}}}
    run = client.submit(f)
    with pytest.raises(FlowFailed, match=r"secret 'NOT_THERE' is not set"):
        run.wait(timeout=30)
    row = audit.run(run.run_id)
    assert row["steps"][0]["status"] == "dead_lettered" and row["steps"][0]["error_type"] == "PermanentError"


@pytest.mark.e2e
def test_secret_never_leaves_the_worker_subprocess(e2e_stack, tmp_path):
    """Audit rows, worker log file, every Redis key (messages included) and the CLI output."""
    from taskplatform.audit import db, reads
    from taskplatform.audit.spool import sink_for
    from tests.test_e2e import ROOT, _manage

    value = f"tp-secret-{uuid.uuid4().hex}"
    _write_secret(value)
    path = tmp_path / "secret-flow.yaml"
    path.write_text(json.dumps(SECRET_FLOW))  # JSON is YAML
    log_file = ROOT / "test-artifacts" / "e2e-worker.log"
    done = _manage(["run-flow", str(path), "--json"], e2e_stack["env"])
    assert done.returncode == 1, done.stderr
    obj = json.loads(done.stdout)
    assert obj["outputs"] == {"echoed": "token=***\n"}
    assert "token *** rejected" in obj["steps"]["leak"]["error"]
    status = _manage(["status", obj["run_id"]], e2e_stack["env"])
    url = db.database_url(os.environ["DATABASE_URL"])
    assert sink_for(url, e2e_stack["server"].url).flush(20)
    rows = json.dumps(reads.load_run(obj["run_id"], url=url), default=str)
    assert "token=***" in rows
    r = e2e_stack["server"].client()
    dumped = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        value_of = {"string": r.get, "list": lambda k: r.lrange(k, 0, -1), "hash": r.hgetall,
                    "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1)}.get(kind)
        if value_of is not None:
            dumped.append(repr(value_of(key)))
    r.close()
    worker_log = log_file.read_text(errors="replace")
    assert "using token ***" in worker_log and "printed token ***" in worker_log
    for where, text in [("cli run-flow", done.stdout + done.stderr),
                        ("cli status", status.stdout + status.stderr), ("audit", rows),
                        ("redis", "".join(dumped)), ("worker log", worker_log)]:
        assert value not in text, f"secret found in {where}"
