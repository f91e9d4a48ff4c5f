#!/usr/bin/env python
"""What the audit costs: many small flows with the audit on and off, in the same run.

    .venv/bin/python bench/audit_bench.py [--flows 300] [--rounds 2] [--pool prefork]
        [--concurrency 2] [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--json]

One private redis-server; a private database made on the given Postgres server (dropped at
the end) and migrated. Then, ``--rounds`` times, alternating so drift hits both alike: a
``celery -A taskplatform worker`` subprocess with ``TASKPLATFORM_AUDIT=0`` (off) or ``1``
(on), a warm-up, and ``--flows`` 3-step flows submitted at once and waited for. With the audit
on, it also times how long after the last run ended every audit row was in Postgres (the
spool's lag), and checks the row counts. Prints flows/s per mode and the on/off ratio.

Wall time is at the mercy of whatever else runs on the machine, so it also counts the CPU
seconds the flows cost: the worker's processes (its audit writer apart), this process (the
submitter; it only spools, the worker's writer writes, as in a deployment), redis-server and
the Postgres backends of the bench database.
On a machine whose cores are busy, throughput goes as 1 / CPU per flow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import psycopg  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.bench import Worker, small_flow  # noqa: E402
from taskplatform.audit import db, spool  # noqa: E402
from taskplatform.audit.models import flow_run_history, task_execution_audit  # noqa: E402
from taskplatform.audit.spool import close_sinks, sink_for  # noqa: E402
from taskplatform.embedded import RedisServer, close_connections  # noqa: E402

APPS: list[Any] = []


def one_round(audit_on: bool, args: argparse.Namespace, server: RedisServer, url: str,
              log: Any) -> dict[str, Any]:
    from taskplatform.app import configure, create_app  # noqa: PLC0415
    from taskplatform.client import Client  # noqa: PLC0415
    from taskplatform.settings import Settings  # noqa: PLC0415

    mode = "on" if audit_on else "off"
    app = create_app(f"audit-bench-{mode}-{uuid.uuid4().hex[:6]}", set_as_current=False)
    configure(app, Settings(redis_url=server.url, database_url=url, audit=audit_on))
    client = Client(app)
    env = {**os.environ, "REDIS_URL": server.url, "DATABASE_URL": url, "PYTHONPATH": str(ROOT),
           "TASKPLATFORM_AUDIT": "1" if audit_on else "0"}
    worker = Worker(f"audit-bench-{mode}", "taskplatform", "io,cpu,plan", env, args.pool,
                    args.concurrency)
    sa_url = db.database_url(url)
    try:
        worker.start()
        worker.wait_ready(app)
        for r in [client.submit(small_flow()) for _ in range(4 * args.concurrency)]:
            r.wait(60)
        if audit_on:  # the writer's first batch (schema check, statements) is not measured
            assert _spool_empty(sa_url, server.url, 60), "audit spool did not drain"
        rows_before = _count(sa_url)
        cpu0 = _cpu(worker, server, url)
        t0 = time.perf_counter()
        runs = [client.submit(small_flow()) for _ in range(args.flows)]
        for r in runs:
            r.wait(args.timeout)
        t1 = time.perf_counter()
        out: dict[str, Any] = {"mode": mode, "seconds": t1 - t0, "flows_per_s": args.flows / (t1 - t0)}
        if audit_on:
            assert _spool_empty(sa_url, server.url, 120), "audit spool did not drain"
            out["rows_in_db_after_s"] = time.perf_counter() - t1
        cpu1 = _cpu(worker, server, url)
        out["cpu_ms_per_flow"] = {k: 1000 * (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / args.flows
                                  for k in cpu1}
        out["cpu_ms_per_flow"]["total"] = sum(out["cpu_ms_per_flow"].values())
        if audit_on:
            runs_n, steps_n = (a - b for a, b in zip(_count(sa_url), rows_before, strict=True))
            out["rows"] = {"flow_run_history": runs_n, "task_execution_audit": steps_n}
            assert runs_n == args.flows and steps_n == 3 * args.flows, out["rows"]
        log(f"audit {mode}: {args.flows} flows in {out['seconds']:.2f}s "
            f"({out['flows_per_s']:.1f} flows/s), CPU {out['cpu_ms_per_flow']['total']:.1f} ms/flow "
            + " ".join(f"{k} {v:.1f}" for k, v in out["cpu_ms_per_flow"].items() if k != "total")
            + (f", all rows in Postgres {out['rows_in_db_after_s']:.2f}s after the last run ended"
               if audit_on else ""))
        return out
    finally:
        worker.stop()
        close_sinks(redis_url=server.url)
        APPS.append(app)  # connections closed once, at the end (kombu pools are shared)
        server.client().flushdb()


def _spool_empty(sa_url: str, redis_url: str, timeout_s: float) -> bool:
    """Wait until the worker's audit writer has written everything spooled (this process
    only spools: the writes are the writer's, as in a deployment)."""
    sink = sink_for(sa_url, redis_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sink.pending() == 0 and not sink.redis.exists(sink.lock_key):
            return True
        time.sleep(0.005)
    return False


def _cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _cpu(worker: Worker, server: RedisServer, url: str) -> dict[str, float]:
    """CPU seconds so far: worker main, pool, audit writer, this process, redis, Postgres."""
    assert worker.proc is not None and server.proc is not None
    main = psutil.Process(worker.proc.pid)
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        me = conn.execute("select pg_backend_pid()").fetchone()[0]
        pids = [r[0] for r in conn.execute(
            "select pid from pg_stat_activity where datname = %s and pid <> %s", (name, me))]
    backends = []
    for pid in pids:
        try:
            backends.append(psutil.Process(pid))
        except psutil.Error:
            pass
    kids = main.children(recursive=True)
    writer = [k for k in kids if "taskplatform.audit.drainer" in " ".join(_cmdline(k))]
    return {"worker_main": _cpu_of([main]),
            "worker_pool": _cpu_of([k for k in kids if k not in writer]),
            "audit_writer": _cpu_of(writer),
            "submitter": _cpu_of([psutil.Process()]),
            "redis": _cpu_of([psutil.Process(server.proc.pid)]),
            "postgres": _cpu_of(backends)}


def _count(url: str) -> tuple[int, int]:
    with db.get_engine(url).connect() as conn:
        return (conn.execute(select(func.count()).select_from(flow_run_history)).scalar_one(),
                conn.execute(select(func.count()).select_from(task_execution_audit)).scalar_one())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs (default 2)")
    p.add_argument("--pool", default="prefork")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="a Postgres server where a private database is made and dropped")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    spool.DRAIN_IN_THIS_PROCESS = False  # the worker's audit writer writes; this process spools
    name = f"tp_audit_bench_{os.getpid()}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    server = RedisServer().start()
    results: list[dict[str, Any]] = []
    try:
        db.upgrade(db.database_url(url))
        for _ in range(args.rounds):
            for audit_on in (False, True):
                results.append(one_round(audit_on, args, server, url, log))
    finally:
        for app in APPS:
            close_connections(app)
        server.stop()
        db.dispose_all()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def rate(mode: str) -> float:
        return statistics.median(r["flows_per_s"] for r in results if r["mode"] == mode)

    def cpu(mode: str) -> float:
        return statistics.median(r["cpu_ms_per_flow"]["total"] for r in results if r["mode"] == mode)

    summary = {
        "config": {"flows": args.flows, "rounds": args.rounds, "pool": args.pool,
                   "concurrency": args.concurrency, "cpus": os.cpu_count()},
        "rounds": results,
        "flows_per_s": {"off": rate("off"), "on": rate("on")},
        "throughput_on_over_off": rate("on") / rate("off"),
        "cpu_ms_per_flow": {"off": cpu("off"), "on": cpu("on")},
        "cpu_throughput_on_over_off": cpu("off") / cpu("on"),
        "spool_lag_s_max": max(r["rows_in_db_after_s"] for r in results if r["mode"] == "on"),
    }
    log(f"median flows/s: off {rate('off'):.1f}, on {rate('on'):.1f}; "
        f"on/off = {summary['throughput_on_over_off']:.3f} "
        f"(audit cost {100 * (1 - summary['throughput_on_over_off']):.1f}% of throughput)")
    log(f"median CPU ms/flow: off {cpu('off'):.1f}, on {cpu('on'):.1f}; CPU-bound throughput "
        f"on/off = {summary['cpu_throughput_on_over_off']:.3f}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
