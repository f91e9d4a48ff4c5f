"""The CLI through click's CliRunner on the in-process stack (subprocess runs are in test_e2e)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from taskplatform.cli import main


@pytest.fixture
def cli(client, redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("TASKPLATFORM_FLOWS_DIR", "flows")
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_run_flow_json(cli):
    res = cli("run-flow", "diamond", "--input", "x=2", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["outputs"] == {"double": 4, "square": 4}
    assert list(obj) == ["run_id", "status", "outputs", "steps"]


def test_run_flow_text_and_inputs_file(cli, tmp_path):
    f = tmp_path / "in.json"
    f.write_text(json.dumps({"who": "file"}))
    res = cli("run-flow", "hello", "--inputs-file", str(f))
    assert res.exit_code == 0
    assert "succeeded" in res.stdout and "hello, file!" in res.stdout


def test_bad_input_exit_code_and_message(cli):
    res = cli("run-flow", "diamond", "--input", "x=seven")
    assert res.exit_code == 3
    assert "inputs.x: expected integer, got 'seven'" in res.stderr
    res = cli("run-flow", "diamond", "--input", "novalue")
    assert res.exit_code == 2 and "expected key=value" in res.stderr


def test_unknown_flow_is_not_found(cli):
    res = cli("run-flow", "helo")
    assert res.exit_code == 6
    assert "did you mean 'hello'" in res.stderr


def test_timeout_exit_code(cli):
    res = cli("run-flow", "hello", "--timeout", "0", "--json")
    assert res.exit_code in (0, 5)  # 5 unless the run won the race


def test_flows_commands(cli):
    listed = cli("flows", "list")
    assert listed.exit_code == 0 and "diamond" in listed.stdout and "report" in listed.stdout
    assert cli("flows", "validate").exit_code == 0
    graph = cli("flows", "graph", "diamond")
    assert graph.stdout.startswith("flowchart TD") and "s_start --> s_double" in graph.stdout
    canvas = cli("flows", "show", "diamond", "--canvas")
    assert "connectors.transform.set('<run_id>', 'start')" in canvas.stdout
    shown = cli("flows", "show", "diamond")
    assert "name: diamond" in shown.stdout


def test_status_and_runs(cli, client):
    run = client.submit("hello")
    run.wait(timeout=30)
    res = cli("status", run.run_id, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "succeeded"
    assert run.run_id in cli("runs").stdout
    missing = cli("status", "nope")
    assert missing.exit_code == 6 and "run not found" in missing.stderr
