"""``run-flow``, ``status``, ``runs``, ``cancel``, ``resume``: runs and their outcomes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from taskplatform.cli.base import (
    RET_FAILED,
    RET_OK,
    RET_TIMEOUT,
    RET_USAGE,
    STATUS_MARK,
    _client,
    _errors,
    _fail,
    _remote_client,
    main,
)
from taskplatform.errors import (
    FlowFailed,
    RunNotFound,
    RunTimeout,
)


def _gather_inputs(flow: Any, pairs: tuple[str, ...], inputs_file: Path | None) -> dict[str, Any]:
    from taskplatform.validation import coerce_cli_input  # noqa: PLC0415

    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        try:
            data = json.loads(inputs_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"--inputs-file {inputs_file}: {exc}", RET_USAGE)
        if not isinstance(data, dict):
            _fail(f"--inputs-file {inputs_file}: must hold a JSON object", RET_USAGE)
        inputs.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--input {pair!r}: expected key=value", RET_USAGE)
        inputs[key] = coerce_cli_input(flow, key, value)
    return inputs


def _run_json(info: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": info["run_id"], "status": info["status"], "outputs": info["outputs"],
            "steps": info["steps"]}


def _follow(run: Any, timeout: float | None) -> None:
    """Print each step's status as it changes, until the run ends (terminal progress)."""
    seen: dict[str, str] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    width = 0
    while True:
        steps = run.steps()
        width = max(width, *(len(s) for s in steps)) if steps else width
        for sid, view in steps.items():
            shown = f"{view.status}:{view.attempts}"
            if seen.get(sid) != shown and view.status != "pending":
                seen[sid] = shown
                attempt = f" (attempt {view.attempts})" if view.attempts > 1 else ""
                err = f"  {view.error}" if view.error and view.status not in ("succeeded",) else ""
                mark = STATUS_MARK.get(view.status, "?")
                click.echo(f"  {mark} {sid:<{width}}  {view.status}{attempt}{err}", err=True)
        if run.status() in ("succeeded", "failed", "canceled"):
            return
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(0.1)


@main.command("run-flow")
@click.argument("flow_ref", metavar="NAME_OR_PATH")
@click.option("--input", "-i", "pairs", multiple=True, metavar="KEY=VALUE",
              help="An input (repeatable); typed by the flow's declaration.")
@click.option("--inputs-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Inputs as a JSON object.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: run_id, status, outputs, steps.")
@click.option("--no-wait", is_flag=True, help="Submit and return at once.")
@click.option("--timeout", type=float, default=None, metavar="S", help="Give up waiting after S seconds.")
@click.option("--run-id", default=None, help="Use this run id (submitting an existing id is a no-op).")
@click.option("--tenant-id", default=None)
@click.option("--user-id", default=None)
@click.option("--correlation-id", default=None)
def run_flow(flow_ref: str, pairs: tuple[str, ...], inputs_file: Path | None, as_json: bool,
             no_wait: bool, timeout: float | None, run_id: str | None, tenant_id: str | None,
             user_id: str | None, correlation_id: str | None) -> None:
    """Run a flow (a name under flows/ or a path) and print its outcome.

    \b
    Examples:
      python manage.py run-flow hello --input who=ada
      python manage.py run-flow flows/examples/diamond.yaml --json
      python manage.py run-flow order-digest --inputs-file in.json --no-wait
    """
    with _errors(), _client() as client:
        flow = client.load(flow_ref)
        inputs = _gather_inputs(flow, pairs, inputs_file)
        started = time.monotonic()
        run = client.submit(flow, inputs, run_id=run_id, tenant_id=tenant_id, user_id=user_id,
                            correlation_id=correlation_id)
        if not as_json:
            click.echo(f"run {run.run_id} of {flow.name}", err=True)
        code = RET_OK
        if not no_wait:
            if not as_json and sys.stderr.isatty():
                _follow(run, timeout)
            try:
                run.wait(timeout=timeout)
            except FlowFailed:
                code = RET_FAILED
            except RunTimeout:
                code = RET_TIMEOUT
        info = run.info()
        if as_json:
            click.echo(json.dumps(_run_json(info), sort_keys=False))
        else:
            _print_run(info, time.monotonic() - started if not no_wait else None)
        sys.exit(code)


def _print_run(info: dict[str, Any], elapsed_s: float | None) -> None:
    took = f" in {elapsed_s:.2f}s" if elapsed_s is not None else ""
    click.echo(f"run {info['run_id']} {info['status']}{took}")
    steps = info["steps"]
    width = max((len(s) for s in steps), default=0)
    for sid, s in steps.items():
        attempts = f"  ({s['attempts']} attempts)" if s["attempts"] > 1 else ""
        err = f"  {s['error']}" if s["error"] else ""
        click.echo(f"  {STATUS_MARK.get(s['status'], '?')} {sid:<{width}}  {s['status']}{attempts}{err}")
    if info.get("error"):
        click.echo(f"error at {info.get('failed_step')}: {info['error']}")
    if info.get("outputs") is not None:
        click.echo("outputs:")
        click.echo(json.dumps(info["outputs"], indent=2, sort_keys=True))


# --- status / runs ----------------------------------------------------------------------------


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
def status(run_id: str, as_json: bool) -> None:
    """Show a run's status, steps and outputs.

    \b
    Example:
      python manage.py status 3f2a9c... --json
    """
    with _errors():
        from taskplatform.settings import load_settings  # noqa: PLC0415

        settings = load_settings()
        if settings.embedded:  # the embedded Redis ended with its process; the audit stays
            from taskplatform.audit.archive import archived_run  # noqa: PLC0415

            run = archived_run(settings, run_id)
            if run is None:
                raise RunNotFound(run_id)
            info = run.info()
        else:
            with _client() as client:
                info = client.get_run(run_id).info()
        if as_json:
            click.echo(json.dumps(_run_json(info)))
        else:
            _print_run(info, None)
        sys.exit(RET_OK if info["status"] != "failed" else RET_FAILED)


@main.command()
@click.option("--flow", default=None, help="Only runs of this flow.")
@click.option("--status", "status_", default=None, help="Only runs in this status (running, failed, ...).")
@click.option("--since", default=None, metavar="WHEN",
              help="Created since an ISO time or an age: 15m, 2h, 7d.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def runs(flow: str | None, status_: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List runs from the audit of record (DATABASE_URL), newest first.

    \b
    Examples:
      python manage.py runs --limit 5
      python manage.py runs --flow order-digest --status failed --since 2h --json
    """
    from taskplatform.audit import reads, spool  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    with _errors():
        try:
            since_at = reads.parse_since(since) if since else None
        except ValueError as exc:
            _fail(str(exc), RET_USAGE)
        spool.flush_pending(load_settings())  # so the newest events are listed too
        for row in reads.list_runs(flow=flow, status=status_, since=since_at, limit=limit):
            if as_json:
                click.echo(json.dumps({
                    "run_id": row["run_id"], "flow": row["flow_id"], "status": row["status"],
                    "created_at": row["created_at"].isoformat(),
                    "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
                    "error": row["error_message"], "failed_step": row["failed_step"],
                    "tenant_id": row["tenant_id"], "correlation_id": row["correlation_id"],
                }))
            else:
                when = row["created_at"].strftime("%Y-%m-%d %H:%M:%S")
                click.echo(f"{row['run_id']}  {when}  {row['flow_id']:<24} {row['status']}")


# --- cancel / resume (taskplatform/control.py) ------------------------------------------------




@main.command()
@click.argument("run_id")
@click.option("--reason", default="canceled by operator", show_default=True)
def cancel(run_id: str, reason: str) -> None:
    """Cancel a run: nothing new starts, running steps are asked to stop, it ends canceled.

    \b
    Example:
      python manage.py cancel 3f2a9c... --reason "wrong inputs"
    """
    with _remote_client() as client:
        steps = client.get_run(run_id).cancel(reason)
    click.echo(f"run {run_id}: cancel asked; canceled {len(steps)} step(s): {', '.join(steps) or '-'}")


@main.command()
@click.argument("run_id")
@click.option("--wait/--no-wait", default=False, help="Wait for the resumed run to end.")
@click.option("--timeout", type=float, default=None, metavar="S")
def resume(run_id: str, wait: bool, timeout: float | None) -> None:
    """Resume a failed or canceled run: succeeded steps keep their outputs, the rest run again.

    \b
    Example:
      python manage.py resume 3f2a9c... --wait
    """
    with _remote_client() as client:
        run = client.get_run(run_id)
        steps = run.resume()
        click.echo(f"run {run_id}: resumed {len(steps)} step(s): {', '.join(steps)}")
        if wait:
            try:
                run.wait(timeout=timeout)
            except FlowFailed as exc:
                _fail(str(exc), RET_FAILED)
            except RunTimeout as exc:
                _fail(str(exc), RET_TIMEOUT)
            click.echo(f"run {run_id} succeeded")
