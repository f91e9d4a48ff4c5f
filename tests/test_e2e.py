"""End to end: `celery -A taskplatform worker` subprocesses (prefork) on a real private Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskplatform.errors import FlowFailed
from tests.orders_server import OrdersServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def orders():
    with OrdersServer() as server:
        yield server


EXAMPLES = {
    "hello": ({}, {"message": "hello, world!"}),
    "diamond": ({"x": 5}, {"double": 10, "square": 25}),
    "branch": ({}, {"total": 115.0, "branch": "big", "echoed": "big order: 115.0\n"}),
    "branch-small": ({"threshold": 500}, {"total": 115.0, "branch": "small", "echoed": None}),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples(e2e_client, name):
    inputs, expected = EXAMPLES[name]
    flow = name.split("-")[0]
    assert e2e_client.submit(flow, inputs).wait(timeout=60) == expected


def test_http_example(e2e_client, orders):
    out = e2e_client.submit("http", {"base_url": orders.url, "order_id": 2}).wait(timeout=60)
    assert out == {"status": 200, "order": {"id": 2, "customer": "bob", "lines": 2}}


def test_http_example_not_found_fails_without_retry(e2e_client, orders):
    run = e2e_client.submit("http", {"base_url": orders.url, "order_id": 99})
    with pytest.raises(FlowFailed, match="HTTP 404"):
        run.wait(timeout=60)
    steps = run.steps()
    assert steps["fetch"].attempts == 1 and steps["pick"].status == "upstream_failed"


def test_report_example(e2e_client, orders):
    out = e2e_client.submit("report", {"base_url": orders.url}).wait(timeout=60)
    assert out["revenue"] == 60 + 55 + 15 + 30 + 9 + 4
    assert out["customers"] == ["cyd", "bob", "ada"]
    assert out["text"].startswith("Order report")


def test_python_built_example(e2e_client):
    from flows.examples.builder_example import build

    assert e2e_client.submit(build(), {"x": 3}).wait(timeout=60) == {"double": 6, "square": 9}


# --- random DAGs ------------------------------------------------------------------------------


@st.composite
def dags(draw):
    """A random DAG of 1-30 steps (each step needs a random subset of earlier ones), maybe
    with one step that fails permanently."""
    n = draw(st.integers(1, 30))
    needs = [[]]
    for i in range(1, n):
        k = draw(st.integers(0, min(i, 4)))
        needs.append(sorted(draw(st.lists(st.integers(0, i - 1), min_size=k, max_size=k, unique=True))))
    fail = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return needs, fail


def _dag_flow(needs, fail):
    steps = {}
    for i, ns in enumerate(needs):
        got = {f"n{j}": {"name": f"${{{{ steps.n{j}.output.name }}}}",
                         "seq": f"${{{{ steps.n{j}.output.seq }}}}"} for j in ns}
        steps[f"n{i}"] = {"uses": "python.call", "needs": [f"n{j}" for j in ns],
                          "with": {"function": "tests.funcs:node",
                                   "kwargs": {"name": f"n{i}", "got": got, "fail": i == fail}}}
    return {"name": "random-dag", "steps": steps}


def _descendants(needs, root):
    out, changed = {root}, True
    while changed:
        changed = False
        for i, ns in enumerate(needs):
            if i not in out and any(j in out for j in ns):
                out.add(i)
                changed = True
    out.discard(root)
    return out


N_GRAPH = ([[], [], [0], [0, 1]], None)  # a->c, a->d, b->d: the smallest non-series-parallel DAG
WHEATSTONE = ([[], [0], [0, 1], [1, 2]], None)  # s->a, s->b, a->b, a->t, b->t
K33 = ([[], [], [], [0, 1, 2], [0, 1, 2], [0, 1, 2]], 1)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dag=dags())
@example(dag=N_GRAPH)
@example(dag=WHEATSTONE)
@example(dag=K33)
def test_random_dags(e2e_client, dag):
    needs, fail = dag
    run = e2e_client.submit(_dag_flow(needs, fail))
    if fail is None:
        run.wait(timeout=120)
    else:
        with pytest.raises(FlowFailed) as err:
            run.wait(timeout=120)
        assert err.value.step == f"n{fail}"
    r = e2e_client.engine.redis
    log = [x.decode() for x in r.lrange(f"test:{run.run_id}:log", 0, -1)]
    statuses = {k: v.status for k, v in run.steps().items()}
    outputs = e2e_client.engine.store.outputs(run.run_id)
    downstream = _descendants(needs, fail) if fail is not None else set()
    for i, ns in enumerate(needs):
        sid = f"n{i}"
        if i in downstream:
            assert statuses[sid] == "upstream_failed", (sid, statuses)
            assert sid not in log
            continue
        if i == fail:
            assert statuses[sid] == "dead_lettered"
            assert log.count(sid) == 1
            continue
        assert statuses[sid] == "succeeded", (sid, statuses)
        assert log.count(sid) == 1, f"{sid} ran {log.count(sid)} times"
        out = outputs[sid]
        for j in ns:  # ran after each need, and received that need's output
            assert out["seq"] > outputs[f"n{j}"]["seq"]
            assert out["got"][f"n{j}"] == {"name": f"n{j}", "seq": outputs[f"n{j}"]["seq"]}
    r.delete(f"test:{run.run_id}:log", f"test:{run.run_id}:seq")


# --- the CLI as users run it ------------------------------------------------------------------


def _manage(args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_run_flow_json_contract(e2e_stack):
    done = _manage(["run-flow", "diamond", "--input", "x=4", "--json"], e2e_stack["env"])
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    assert set(obj) == {"run_id", "status", "outputs", "steps"}
    assert obj["status"] == "succeeded" and obj["outputs"] == {"double": 8, "square": 16}
    assert obj["steps"]["join"] == {"status": "succeeded", "attempts": 1, "error": None}
    status = _manage(["status", obj["run_id"], "--json"], e2e_stack["env"])
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"


def test_cli_run_flow_failure_exit_code(e2e_stack, tmp_path):
    bad = tmp_path / "fails.yaml"
    bad.write_text("name: fails\nsteps:\n  a: {uses: shell.run, with: {argv: [\"false\"]}}\n")
    done = _manage(["run-flow", str(bad), "--json"], e2e_stack["env"])
    assert done.returncode == 1
    obj = json.loads(done.stdout)
    assert obj["status"] == "failed" and obj["steps"]["a"]["status"] == "dead_lettered"
    assert "exited with 1" in obj["steps"]["a"]["error"]
    assert "Traceback" not in done.stderr


def test_cli_no_wait_then_status(e2e_stack):
    done = _manage(["run-flow", "hello", "--no-wait", "--json"], e2e_stack["env"])
    assert done.returncode == 0
    obj = json.loads(done.stdout)
    assert obj["status"] in ("pending", "running", "succeeded")


def _redis_servers(marker: str) -> set[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_cli_embedded_default_leaves_nothing_behind(tmp_path):
    # The embedded redis-server lives in a temp folder under TMPDIR: a private TMPDIR tells ours
    # apart from those of anything else running on the machine.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["TMPDIR"] = str(tmp_path)
    done = _manage(["run-flow", "flows/examples/hello.yaml", "--input", "who=ci", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == {"message": "hello, ci!"}
    assert not _redis_servers(f"{tmp_path}/taskplatform-redis-")  # the embedded redis-server is gone


def test_submit_flow_api_in_another_process(e2e_stack):
    code = (
        "from taskplatform import submit_flow, get_run, FlowFailed\n"
        "run = submit_flow('diamond', {'x': 9})\n"
        "print(run.wait(timeout=60))\n"
        "print(get_run(run.run_id).status())\n"
        "bad = submit_flow({'name': 'f', 'steps': {'a': {'uses': 'python.call',"
        " 'with': {'function': 'tests.funcs:boom'}}}})\n"
        "try:\n    bad.wait(timeout=60)\nexcept FlowFailed as e:\n    print('failed', e.step)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e2e_stack["env"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["{'double': 18, 'square': 81}", "succeeded", "failed a"]
