"""``db``, ``recover``, ``dlq``, ``workers``: operating the platform."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from taskplatform.cli.base import (
    RET_BACKEND,
    RET_FAILED,
    RET_OK,
    RET_USAGE,
    _client,
    _errors,
    _fail,
    _remote_client,
    main,
)

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


# --- recover / dlq (taskplatform/recovery.py, dlq.py) ---------------------------------------


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


