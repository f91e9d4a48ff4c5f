"""The engine on real Redis with an in-process worker: semantics of runs and steps."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from celery.signals import before_task_publish

from taskplatform.errors import FlowFailed, FlowValidationError, RunNotFound


@pytest.fixture(autouse=True)
def _test_redis_env(redis_server):
    os.environ["TASKPLATFORM_TEST_REDIS"] = redis_server.url
    yield


def flow(name, steps, **extra):
    return {"name": name, "steps": steps, **extra}


def call(function, needs=(), when=None, **with_):
    step = {"uses": "python.call", "with": {"function": f"tests.funcs:{function}", **with_}}
    if needs:
        step["needs"] = list(needs)
    if when is not None:
        step["when"] = when
    return step


def counter(client, key):
    return int(client.engine.redis.get(f"test:count:{key}") or 0)


def test_diamond_outputs_and_statuses(client):
    run = client.submit("diamond", {"x": 7})
    assert run.wait(timeout=30) == {"double": 14, "square": 49}
    assert run.status() == "succeeded"
    assert {s.status for s in run.steps().values()} == {"succeeded"}


def test_failed_step_marks_exactly_its_downstream(client):
    f = flow("fail", {
        "a": call("count", kwargs={"key": "a"}),
        "bad": call("boom", needs=["a"]),
        "after_bad": call("count", needs=["bad"], kwargs={"key": "after"}),
        "after_after": call("count", needs=["after_bad", "a"], kwargs={"key": "after2"}),
        "side": call("count", needs=["a"], kwargs={"key": "side"}),
        "side2": call("count", needs=["side"], kwargs={"key": "side2"}),
    })
    run = client.submit(f)
    with pytest.raises(FlowFailed) as err:
        run.wait(timeout=30)
    assert err.value.step == "bad"
    assert "ValueError: boom" in err.value.error
    statuses = {k: v.status for k, v in run.steps().items()}
    assert statuses == {"a": "succeeded", "bad": "dead_lettered", "after_bad": "upstream_failed",
                        "after_after": "upstream_failed", "side": "succeeded", "side2": "succeeded"}
    assert counter(client, "after") == 0 and counter(client, "side2") == 1
    assert run.steps()["bad"].attempts == 1  # a ValueError is permanent: no retry


def test_transient_errors_retry_then_succeed(client):
    f = flow("flaky", {"f": call("flaky", kwargs={"key": "k1", "failures": 2})},
             defaults={"retry": {"max_attempts": 3, "backoff_s": 0.05, "jitter": False}})
    run = client.submit(f)
    assert run.wait(timeout=30) == {}
    assert run.steps()["f"].attempts == 3
    assert client.engine.store.outputs(run.run_id)["f"] == {"calls": 3}


def test_retried_messages_stay_readable_in_flower(client):
    """A retry is a new message: it keeps the readable argsrepr (no data) of the first one."""
    from celery import signals

    seen: list[dict] = []

    def grab(headers=None, **_):
        if headers and headers.get("task", "").startswith("connectors."):
            seen.append(dict(headers))

    signals.before_task_publish.connect(grab, weak=False)
    try:
        f = flow("flaky-repr", {"f": call("flaky", kwargs={"key": "repr1", "failures": 2})},
                 defaults={"retry": {"max_attempts": 3, "backoff_s": 0.05, "jitter": False}})
        run = client.submit(f)
        run.wait(timeout=30)
    finally:
        signals.before_task_publish.disconnect(grab)
    mine = [h for h in seen if run.run_id in str(h.get("argsrepr"))]
    assert [h["retries"] for h in mine] == [0, 1, 2]
    assert {h["argsrepr"] for h in mine} == {f"flow=flaky-repr step=f run={run.run_id}"}
    assert {h["kwargsrepr"] for h in mine} == {"{}"}


def test_retries_exhausted_fail_the_step(client):
    f = flow("flaky2", {"f": {**call("flaky", kwargs={"key": "k2", "failures": 5}),
                              "retry": {"max_attempts": 2, "backoff_s": 0.01}}})
    run = client.submit(f)
    with pytest.raises(FlowFailed, match="flaky call 2"):
        run.wait(timeout=30)
    assert run.steps()["f"].attempts == 2


def test_when_false_skips_and_skip_propagates_unless_when_is_given(client):
    f = flow("skips", {
        "a": call("count", kwargs={"key": "sa"}),
        "no": call("count", needs=["a"], when="${{ `false` }}", kwargs={"key": "no"}),
        "plain_after_skip": call("count", needs=["no"], kwargs={"key": "plain"}),
        "deciding_after_skip": call("count", needs=["no"], when="${{ steps.no.status == 'skipped' }}",
                                    kwargs={"key": "decide"}),
        "zero_is_false": call("count", needs=["a"], when="${{ `0` }}", kwargs={"key": "zero"}),
    }, outputs={"no": "${{ steps.no.output }}", "decided": "${{ steps.deciding_after_skip.output.calls }}"})
    run = client.submit(f)
    assert run.wait(timeout=30) == {"no": None, "decided": 1}
    statuses = {k: v.status for k, v in run.steps().items()}
    assert statuses == {"a": "succeeded", "no": "skipped", "plain_after_skip": "skipped",
                        "deciding_after_skip": "succeeded", "zero_is_false": "skipped"}
    assert counter(client, "no") == counter(client, "plain") == counter(client, "zero") == 0


def test_outputs_reach_dependents_with_types_kept(client):
    f = flow("types", {
        "a": {"uses": "transform.set", "with": {"values": {"n": 3, "l": [1, 2], "s": "x", "none": None}}},
        "b": call("echo", needs=["a"], kwargs={
            "n": "${{ steps.a.output.n }}", "l": "${{ steps.a.output.l }}",
            "text": "n=${{ steps.a.output.n }} l=${{ steps.a.output.l }}"}),
    }, outputs={"b": "${{ steps.b.output }}"})
    out = client.submit(f).wait(timeout=30)
    assert out == {"b": {"n": 3, "l": [1, 2], "text": "n=3 l=[1,2]"}}


def _redeliver(client, run_id, step_id):
    """Publish a step's message again, as a redelivery would; returns its AsyncResult."""
    spec = client.engine.run_spec(run_id)
    sig = spec.plan.steps[step_id].signature(run_id)
    options = {k: v for k, v in sig.options.items() if k != "ignore_result"}
    return client.app.send_task(sig.task, args=sig.args, **options)


def test_redelivered_message_does_not_repeat_the_side_effect(client):
    f = flow("once", {"a": call("count", kwargs={"key": "once"}),
                      "b": call("count", needs=["a"], kwargs={"key": "once-b"})})
    run = client.submit(f)
    run.wait(timeout=30)
    dups = [_redeliver(client, run.run_id, s) for s in ("a", "b", "a")]
    assert [d.get(timeout=30) for d in dups] == [{"status": "succeeded", "duplicate": True}] * 3
    assert counter(client, "once") == 1 and counter(client, "once-b") == 1
    assert run.status() == "succeeded"


def test_concurrent_duplicate_is_turned_away_by_the_lease(client):
    f = flow("lease", {"slow": call("slow_count", kwargs={"key": "lease", "seconds": 0.5})})
    run = client.submit(f)
    deadline = time.monotonic() + 30
    while run.steps()["slow"].status != "running":  # the first copy holds the lease...
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.01)
    dup = _redeliver(client, run.run_id, "slow")  # ...when a second copy arrives
    run.wait(timeout=30)
    assert dup.get(timeout=30) == {"status": "succeeded", "duplicate": True}
    assert counter(client, "lease") == 1


def test_submitting_an_existing_run_id_is_a_no_op(client):
    f = flow("idem", {"a": call("count", kwargs={"key": "idem"})})
    run1 = client.submit(f, run_id="fixed-run-id")
    run2 = client.submit(f, run_id="fixed-run-id")
    assert run1.run_id == run2.run_id
    run2.wait(timeout=30)
    assert counter(client, "idem") == 1


def test_wait_holds_no_worker_slot(client):
    # 12 parallel waits on 8 worker threads: a later flow still finishes while they wait.
    steps = {f"w{i}": {"uses": "wait.duration", "with": {"duration": "PT1.5S"}} for i in range(12)}
    waits = client.submit(flow("waits", steps))
    quick = client.submit("hello")
    assert quick.wait(timeout=30) == {"message": "hello, world!"}
    assert waits.status() in ("pending", "running")
    waits.wait(timeout=30)
    details = client.engine.store.step_details(waits.run_id)
    assert all(d["attempts"] == 1 for d in details.values())


def test_output_expression_error_fails_the_run(client):
    f = flow("outerr", {"a": {"uses": "transform.set", "with": {"values": {"x": "s"}}}},
             outputs={"bad": "${{ abs(steps.a.output.x) }}"})
    with pytest.raises(FlowFailed, match="outputs"):
        client.submit(f).wait(timeout=30)


def test_non_json_output_fails_permanently(client):
    run = client.submit(flow("nojson", {"a": call("not_json")}))
    with pytest.raises(FlowFailed, match="not JSON-serialisable"):
        run.wait(timeout=30)
    assert run.steps()["a"].attempts == 1


def test_inputs_are_validated_at_submit(client):
    with pytest.raises(FlowValidationError, match="inputs.x: expected integer"):
        client.submit("diamond", {"x": "seven"})
    with pytest.raises(FlowValidationError, match="unknown input"):
        client.submit("diamond", {"y": 1})


def test_run_handles_from_anywhere(client):
    run = client.submit("hello", {"who": "bob"})
    again = client.get_run(run.run_id)
    assert again.wait(timeout=30) == {"message": "hello, bob!"}
    with pytest.raises(RunNotFound):
        client.get_run("no-such-run")


def _largest_message(collected):
    return max(collected) if collected else 0


@pytest.mark.slow
@pytest.mark.parametrize("shape,size", [("linear", 500), ("fanout", 1000)])
def test_large_flows_complete_with_constant_size_messages(client, shape, size, capsys):
    sizes: list[int] = []
    lock = threading.Lock()

    def measure(sender=None, body=None, headers=None, **_):
        n = len(json.dumps(body)) + len(json.dumps(headers, default=str))
        with lock:
            sizes.append(n)

    before_task_publish.connect(measure, weak=False)
    try:
        val = {"uses": "transform.set", "with": {"values": {"v": 1}}}
        if shape == "linear":
            steps = {"s0": val} | {f"s{i}": {**val, "needs": [f"s{i - 1}"]} for i in range(1, size)}
        else:
            steps = {"root": val} | {f"m{i}": {**val, "needs": ["root"]} for i in range(size)}
            steps["join"] = {"uses": "transform.set", "needs": [f"m{i}" for i in range(size)],
                             "with": {"values": {"n": size}}}
        run = client.submit(flow(f"big-{shape}", steps))
        run.wait(timeout=300)
    finally:
        before_task_publish.disconnect(measure)
    assert run.status() == "succeeded"
    assert len(sizes) == len(steps)
    largest = _largest_message(sizes)
    with capsys.disabled():
        print(f"\n[{shape} {size}] messages={len(sizes)} largest={largest} bytes")
    assert largest < 2048  # constant: ids only, whatever the flow's size
