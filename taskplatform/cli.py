"""``python manage.py``: run flows, inspect them and their runs. No business logic here.

Exit codes: 0 ok / run succeeded, 1 run failed or canceled, 2 usage error, 3 invalid flow or
inputs, 4 backend unreachable, 5 timed out waiting, 6 not found.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from taskplatform.errors import (
    BackendError,
    ConfigError,
    FlowFailed,
    FlowNotFound,
    FlowValidationError,
    RunNotFound,
    RunTimeout,
)

RET_OK, RET_FAILED, RET_USAGE, RET_INVALID, RET_BACKEND, RET_TIMEOUT, RET_NOT_FOUND = range(7)
STATUS_MARK = {"succeeded": "✓", "failed": "✗", "dead_lettered": "✗", "upstream_failed": "⊘",
               "skipped": "↷", "canceled": "⊘", "running": "…", "retrying": "↻", "waiting": "⏸",
               "pending": " "}


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Translate our errors into a message on stderr and a named exit code: no tracebacks."""
    try:
        yield
    except FlowValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(RET_INVALID)
    except (FlowNotFound, RunNotFound) as exc:
        _fail(str(exc), RET_NOT_FOUND)
    except (BackendError, ConfigError) as exc:
        _fail(str(exc), RET_BACKEND)


@contextlib.contextmanager
def _client() -> Iterator[Any]:
    """A client on REDIS_URL, or on an embedded Redis and worker for the command's duration."""
    from taskplatform.app import app  # noqa: PLC0415 - keep --help fast
    from taskplatform.audit.db import startup_check  # noqa: PLC0415
    from taskplatform.client import Client  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    settings = load_settings()
    startup_check(settings)
    if settings.embedded:
        from taskplatform.embedded import embedded_stack  # noqa: PLC0415

        with embedded_stack(app, settings):
            yield Client(app)
    else:
        yield Client(app)


def _flows_dir() -> Path:
    from taskplatform.settings import load_settings  # noqa: PLC0415

    return load_settings().flows_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """taskplatform: run flows of connector actions on Celery.

    \b
    Examples:
      python manage.py run-flow flows/examples/hello.yaml --input who=ada
      python manage.py flows list
      python manage.py flows graph diamond
      python manage.py status 3f2a...
      python manage.py dlq list
      python manage.py resume 3f2a...
    """
    from taskplatform.logs import configure_logging  # noqa: PLC0415
    from taskplatform.secrets import install_log_redaction  # noqa: PLC0415

    install_log_redaction()
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    # Readable text here (steps of the embedded worker log with their run and step), secrets
    # masked; JSON lines when TASKPLATFORM_LOG_FORMAT=json asks for them.
    log_format = "json" if os.environ.get("TASKPLATFORM_LOG_FORMAT") == "json" else "text"
    if not logging.getLogger().handlers:  # like basicConfig: leave a configured process alone
        configure_logging(log_format=log_format, level=level)


# --- run-flow ---------------------------------------------------------------------------------


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


# --- db ---------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """The audit database (DATABASE_URL; a SQLite file when unset)."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Create or update the audit schema to this code's revision.

    \b
    Example:
      DATABASE_URL=postgresql://tp:secret@127.0.0.1:5432/taskplatform python manage.py db upgrade
    """
    from taskplatform.audit import db  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    with _errors():
        url = db.database_url(load_settings().database_url)
        revision = db.upgrade(url)
        click.echo(f"audit schema at revision {revision} ({db.safe_url(url)})")


@db_group.command("sweep")
def db_sweep() -> None:
    """Settle attempts left `started` past their deadline (a lost worker's) as failed.

    \b
    Example:
      python manage.py db sweep
    """
    from taskplatform.audit import db, sweeper  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    with _errors():
        url = db.database_url(load_settings().database_url)
        db.check_schema(url)
        with db.get_engine(url).begin() as conn:
            click.echo(f"swept {sweeper.sweep(conn)} abandoned attempt(s)")


# --- cancel / resume / recover / dlq (taskplatform/control.py, recovery.py, dlq.py) ------------


@contextlib.contextmanager
def _remote_client() -> Iterator[Any]:
    """A client on REDIS_URL: these commands act on runs of a shared Redis."""
    from taskplatform.errors import DeadLetterNotFound, RunStateError  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415

    with _errors():
        if load_settings().embedded:
            _fail("REDIS_URL is not set: runs of the embedded Redis end with their process", RET_BACKEND)
        try:
            with _client() as client:
                yield client
        except RunStateError as exc:
            _fail(str(exc), RET_FAILED)
        except DeadLetterNotFound as exc:
            _fail(str(exc), RET_NOT_FOUND)


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


@main.command()
@click.option("--stale-after", type=float, default=None, metavar="S",
              help="Re-launch ready steps unclaimed for S seconds "
                   "(default TASKPLATFORM_RECOVERY_STALE_AFTER_S).")
@click.option("--json", "as_json", is_flag=True)
def recover(stale_after: float | None, as_json: bool) -> None:
    """Find stuck runs (dead workers, lost messages, unfinished runs) and drive them on.

    celery beat runs the same sweep every TASKPLATFORM_RECOVERY_INTERVAL_S on the plan queue.

    \b
    Example:
      python manage.py recover --json
    """
    with _remote_client() as client:
        report = client.recover(stale_after_s=stale_after)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"checked {report['checked']} run(s) in {report['took_s']}s")
    for run_id, steps in report["relaunched"].items():  # type: ignore[union-attr]
        click.echo(f"  re-launched {run_id}: {', '.join(steps)}")
    for run_id in report["finished"]:  # type: ignore[union-attr]
        click.echo(f"  finished {run_id}")
    for run_id in report["lost"]:  # type: ignore[union-attr]
        click.echo(f"  lost {run_id}: its state is gone from Redis")


@main.group()
def dlq() -> None:
    """Dead letters: steps that failed for good, and poison messages."""


@dlq.command("list")
@click.option("--flow", default=None, help="Only entries of this flow.")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(flow: str | None, as_json: bool) -> None:
    """List dead letters, oldest first.

    \b
    Example:
      python manage.py dlq list --flow order-digest
    """
    with _remote_client() as client:
        entries = client.engine.dlq.list(flow=flow)
        poison = client.engine.dlq.poison_counts()
    if as_json:
        click.echo(json.dumps({"entries": entries, "poison_counts": poison}))
        return
    for e in entries:
        where = f"{e['flow']} {e['run_id']} {e['step_id']}" if e["kind"] == "step" else f"queue {e['queue']}"
        click.echo(f"{e['id']}  {e['kind']:<6} {where}  {e['error']}")
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
               + (f"; poison messages seen: {poison}" if poison else ""))


@dlq.command("show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """Show one dead letter as JSON (inputs and errors are masked).

    \b
    Example:
      python manage.py dlq show 3f2a9c....fetch
    """
    with _remote_client() as client:
        click.echo(json.dumps(client.engine.dlq.get(entry_id), indent=2))


@dlq.command("replay")
@click.argument("entry_id", required=False)
@click.option("--flow", default=None, help="Replay every step entry of this flow.")
def dlq_replay(entry_id: str | None, flow: str | None) -> None:
    """Re-run dead-lettered steps under their run and step ids; each run goes on to its end.

    \b
    Examples:
      python manage.py dlq replay 3f2a9c....fetch
      python manage.py dlq replay --flow order-digest
    """
    if (entry_id is None) == (flow is None):
        _fail("give an entry id or --flow NAME", RET_USAGE)
    from taskplatform.errors import RunNotFound as _RunNotFound  # noqa: PLC0415
    from taskplatform.errors import RunStateError

    with _remote_client() as client:
        ids = [entry_id] if entry_id else [e["id"] for e in client.engine.dlq.list(flow=flow, kind="step")]
        bad = 0
        for eid in ids:
            try:
                done = client.replay(eid)
            except (RunStateError, _RunNotFound) as exc:
                if entry_id:
                    raise
                bad += 1
                click.echo(f"skipped {eid}: {exc}", err=True)
                continue
            click.echo(f"replayed {eid}: run {done['run_id']} re-runs {', '.join(done['steps'])}")
    sys.exit(RET_FAILED if bad else RET_OK)


@dlq.command("purge")
@click.option("--flow", default=None, help="Only entries of this flow.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(flow: str | None, yes: bool) -> None:
    """Delete dead letters (all, or those of one flow).

    \b
    Example:
      python manage.py dlq purge --flow order-digest --yes
    """
    if not yes:
        click.confirm(f"delete every dead letter{' of ' + flow if flow else ''}?", abort=True)
    with _remote_client() as client:
        n = client.engine.dlq.purge(flow=flow)
    click.echo(f"purged {n} entr{'y' if n == 1 else 'ies'}")


# --- flows ------------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: workers and queues.")
@click.option("--timeout", type=float, default=1.0, show_default=True, metavar="S",
              help="How long to wait for workers to answer.")
@click.option("--listen", type=float, default=None, metavar="S",
              help="How long to listen for heartbeats (0: skip).")
def workers(as_json: bool, timeout: float, listen: float | None) -> None:
    """Workers that are up: their queues, active tasks, last heartbeat; and queue depths.

    \b
    Example:
      REDIS_URL=redis://127.0.0.1:6379/0 python manage.py workers
    """
    from taskplatform import defaults  # noqa: PLC0415
    from taskplatform.settings import load_settings  # noqa: PLC0415
    from taskplatform.workers import snapshot  # noqa: PLC0415

    if load_settings().embedded:
        _fail("REDIS_URL is not set: there are no workers to look at", RET_BACKEND)
    with _errors(), _client() as client:
        engine = client.engine
        info = snapshot(client.app, engine.redis, prefix=engine.settings.key_prefix, timeout_s=timeout,
                        listen_s=defaults.HEARTBEAT_LISTEN_S if listen is None else listen)
    if as_json:
        click.echo(json.dumps(info))
        return
    _print_workers(info)


def _print_workers(info: dict[str, Any]) -> None:
    rows = info["workers"]
    if not rows:
        click.echo("no worker answered")
    else:
        click.echo(f"{'WORKER':<28} {'QUEUES':<14} {'POOL':<14} {'ACTIVE':>6} {'DONE':>7}  HEARTBEAT")
        for w in rows:
            beat = "-" if w["last_heartbeat_s_ago"] is None else f"{w['last_heartbeat_s_ago']:.1f}s ago"
            pool = f"{w['pool'] or '?'}/{w['concurrency'] or '?'}"
            click.echo(f"{w['name']:<28} {','.join(w['queues']):<14} {pool:<14} "
                       f"{len(w['active']):>6} {w['processed'] or 0:>7}  {beat}")
            for t in w["active"]:
                click.echo(f"    running {t['name']} {t['args']}")
    click.echo("queues: " + "  ".join(f"{q}={n}" for q, n in info["queues"].items()))


@main.group()
def flows() -> None:
    """List, validate and show flow definitions."""


@flows.command("list")
def flows_list() -> None:
    """List the flows under the flows folder (TASKPLATFORM_FLOWS_DIR, default flows/).

    \b
    Example:
      python manage.py flows list
    """
    import yaml  # noqa: PLC0415

    from taskplatform.validation import flow_files  # noqa: PLC0415

    root = _flows_dir()
    for path in flow_files(root):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        name = data.get("name", "?") if isinstance(data, dict) else "?"
        desc = data.get("description", "") if isinstance(data, dict) else ""
        click.echo(f"{name:<24} {str(path):<40} {desc}")


@flows.command("validate")
@click.argument("refs", nargs=-1)
def flows_validate(refs: tuple[str, ...]) -> None:
    """Validate flows (all under the flows folder when none is named).

    \b
    Examples:
      python manage.py flows validate
      python manage.py flows validate flows/examples/diamond.yaml
    """
    from taskplatform.validation import find_flow, flow_files, load_flow_file  # noqa: PLC0415

    root = _flows_dir()
    bad = 0
    targets: list[Path | str] = list(refs) or list(flow_files(root))
    for ref in targets:
        try:
            path = find_flow(str(ref), root)
            flow = load_flow_file(path)
        except (FlowValidationError, FlowNotFound) as exc:
            bad += 1
            click.echo(str(exc), err=True)
        else:
            click.echo(f"ok  {path}  ({flow.name}, {len(flow.steps)} steps)")
    sys.exit(RET_INVALID if bad else RET_OK)


def _load(ref: str) -> Any:
    from taskplatform.validation import find_flow, load_flow_file  # noqa: PLC0415

    return load_flow_file(find_flow(ref, _flows_dir()))


@flows.command("show")
@click.argument("ref")
@click.option("--canvas", is_flag=True, help="Show the compiled plan and the launch canvas.")
def flows_show(ref: str, canvas: bool) -> None:
    """Print a flow as validated (with defaults), or its compiled plan.

    \b
    Example:
      python manage.py flows show diamond --canvas
    """
    import yaml  # noqa: PLC0415

    from connectors.base import default_registry  # noqa: PLC0415
    from taskplatform.compiler import compile_flow  # noqa: PLC0415

    with _errors():
        flow = _load(ref)
        if canvas:
            click.echo(compile_flow(flow, default_registry()).describe())
        else:
            click.echo(yaml.safe_dump(flow.to_spec(), sort_keys=False).rstrip())


@flows.command("graph")
@click.argument("ref")
def flows_graph(ref: str) -> None:
    """Print a flow's graph as Mermaid.

    \b
    Example:
      python manage.py flows graph diamond > diamond.mmd
    """
    from connectors.base import default_registry  # noqa: PLC0415
    from taskplatform.compiler import compile_flow  # noqa: PLC0415

    with _errors():
        click.echo(compile_flow(_load(ref), default_registry()).mermaid())


if __name__ == "__main__":
    main()
