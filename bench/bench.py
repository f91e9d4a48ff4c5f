#!/usr/bin/env python
"""taskplatform against bare Celery, on one private Redis, same pool and concurrency.

    cd /work/main && .venv/bin/python bench/bench.py [--quick] [--json]
        [--pool prefork] [--concurrency 2] [--flows 300] [--fanout 2000] [--chain 300]

One run starts a private redis-server (:class:`taskplatform.embedded.RedisServer`), then

1. a ``celery -A taskplatform worker`` subprocess: warm-up, then the shapes (small flows,
   fan-out with a join, long chain, an "N"-shaped DAG), then the worker is stopped;
2. a ``celery -A bench.bare_app worker`` subprocess (queue ``bare``) with the same pool and
   concurrency: the same shapes as bare Celery canvases, then it is stopped.

It prints wall times and their ratio, the largest message published per shape (in this
process and in the workers, see :mod:`bench.measure`), and taskplatform's dispatch latency
(a step's start minus the latest finish of its needs). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/ (where bench.py would shadow the bench package).
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import chain, chord, group  # noqa: E402
from celery.signals import before_task_publish  # noqa: E402

from bench import measure  # noqa: E402
from taskplatform.config import broker_url_for  # noqa: E402
from taskplatform.embedded import RedisServer, close_connections  # noqa: E402

LOG_DIR = ROOT / "bench" / "logs"
SET = {"uses": "transform.set", "with": {"values": {"v": 1}}}


# --- flows --------------------------------------------------------------------------------------


def _step(needs: list[str] | None = None) -> dict[str, Any]:
    return {**SET, "needs": needs} if needs else dict(SET)


def small_flow() -> dict[str, Any]:
    return {"name": "bench-small", "steps": {"a": _step(), "b": _step(["a"]), "c": _step(["b"])}}


def fanout_flow(n: int) -> dict[str, Any]:
    steps = {"root": _step()} | {f"m{i}": _step(["root"]) for i in range(n)}
    steps["join"] = _step([f"m{i}" for i in range(n)])
    return {"name": f"bench-fanout-{n}", "steps": steps}


def chain_flow(n: int) -> dict[str, Any]:
    steps = {"s0": _step()} | {f"s{i}": _step([f"s{i - 1}"]) for i in range(1, n)}
    return {"name": f"bench-chain-{n}", "steps": steps}


def ndag_flow(width: int, layers: int) -> dict[str, Any]:
    """Layers of ``width`` nodes; node i needs nodes i and i+1 (mod width) of the layer before.

    Overlapping pairs make "N" shapes (a->x, b->x, b->y without a->y): the graph is not
    series-parallel, so no chain/group/chord nesting expresses it without extra barriers.
    """
    steps: dict[str, Any] = {f"l0_{i}": _step() for i in range(width)}
    for layer in range(1, layers):
        for i in range(width):
            steps[f"l{layer}_{i}"] = _step([f"l{layer - 1}_{i}", f"l{layer - 1}_{(i + 1) % width}"])
    return {"name": f"bench-ndag-{width}x{layers}", "steps": steps}


def needs_of(flow: dict[str, Any]) -> dict[str, list[str]]:
    return {sid: list(s.get("needs", ())) for sid, s in flow["steps"].items()}


# --- measuring ----------------------------------------------------------------------------------


class SubmitterSizes:
    """``before_task_publish`` in this process: the largest message and count, per label."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.largest: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.lock = threading.Lock()
        before_task_publish.connect(self._on_publish, weak=False)

    def _on_publish(self, body: Any = None, headers: Any = None, **_: Any) -> None:
        if self.label is None:
            return
        size = measure.message_size(body, headers)
        with self.lock:
            self.largest[self.label] = max(self.largest.get(self.label, 0), size)
            self.count[self.label] = self.count.get(self.label, 0) + 1


class Sizes:
    """Both sides of the largest-message measurement for one labelled section."""

    def __init__(self, r: redis.Redis, submitter: SubmitterSizes) -> None:
        self.r = r
        self.submitter = submitter

    @contextlib.contextmanager
    def section(self, label: str) -> Iterator[dict[str, int]]:
        gen = self.r.incr(measure.GEN_KEY)
        time.sleep(measure.GEN_TTL_S + 0.15)  # every worker process sees the new generation
        out: dict[str, int] = {}
        self.submitter.label = label
        try:
            yield out
        finally:
            self.submitter.label = None
        out["submitter"] = self.submitter.largest.get(label, 0)
        out["submitter_messages"] = self.submitter.count.get(label, 0)
        out["worker"] = int(self.r.get(measure.MAX_KEY.format(gen=gen)) or 0)


def percentiles(values_s: list[float]) -> dict[str, float | int | None]:
    """p50/p95/max in milliseconds (nearest-rank)."""
    if not values_s:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    v = sorted(values_s)

    def rank(p: float) -> float:
        return v[min(len(v) - 1, max(0, int(round(p * len(v) + 0.5)) - 1))]

    return {"n": len(v), "p50_ms": round(rank(0.50) * 1000, 2), "p95_ms": round(rank(0.95) * 1000, 2),
            "max_ms": round(v[-1] * 1000, 2)}


def dispatch_latencies(details: dict[str, dict[str, Any]], needs: dict[str, list[str]],
                       only: Callable[[str], bool] = lambda _sid: True) -> list[float]:
    """Per step with needs: its start minus the latest finish among its needs, in seconds."""
    out = []
    for sid, ns in needs.items():
        if not ns or not only(sid):
            continue
        started = details[sid].get("first_started_at") or details[sid]["started_at"]
        out.append(float(started) - max(float(details[n]["finished_at"]) for n in ns))
    return out


# --- workers ------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # in the child, between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Worker:
    """A ``celery worker`` subprocess in its own session, stopped warm then killed if need be."""

    def __init__(self, name: str, app_module: str, queues: str, env: dict[str, str],
                 pool: str, concurrency: int) -> None:
        self.node = f"{name}-{os.getpid()}@{socket.gethostname()}"
        self.log_path = LOG_DIR / f"{name}.log"
        self.argv = [sys.executable, "-m", "celery", "-A", app_module, "worker", "-Q", queues,
                     "-P", pool, "-c", str(concurrency), "-n", self.node, "--without-mingle",
                     "--without-gossip", "--include", "bench.measure", "-l", "WARNING"]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, app: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.node} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            if app.control.ping(destination=[self.node], timeout=0.5):
                return
        raise RuntimeError(f"worker {self.node} did not answer a ping within {timeout_s:g}s; "
                           f"see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # warm shutdown
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # pool children left behind, if any
            os.killpg(proc.pid, signal.SIGKILL)


# --- the shapes ---------------------------------------------------------------------------------


def run_taskplatform(args: argparse.Namespace, server: RedisServer, sizes: Sizes,
                     log: Callable[[str], None]) -> dict[str, Any]:
    from taskplatform.app import configure, create_app  # noqa: PLC0415
    from taskplatform.client import Client  # noqa: PLC0415
    from taskplatform.settings import Settings  # noqa: PLC0415

    app = create_app("taskplatform-bench", set_as_current=False)
    # The audit is off unless --audit: this compares the engine with bare Celery, like for like
    # (bench/audit_bench.py measures what the audit adds, on Postgres).
    audit = "1" if args.audit else "0"
    configure(app, Settings(redis_url=server.url, audit=args.audit))
    client = Client(app)
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT),
           measure.ENV: server.url, "TASKPLATFORM_AUDIT": audit, "EXECUTOR_METRICS_PORT": "0"}
    worker = Worker("bench-tp", "taskplatform", "io,cpu,plan", env, args.pool, args.concurrency)
    out: dict[str, Any] = {}
    try:
        worker.start()
        worker.wait_ready(app)
        log(f"taskplatform worker up ({args.pool}, -c {args.concurrency}); warming up")
        for _ in range(2):  # every pool process: engine, connections, spec cache code paths
            runs = [client.submit(small_flow()) for _ in range(2 * args.concurrency)]
            runs.append(client.submit(fanout_flow(20)))
            for r in runs:
                r.wait(args.timeout)

        # 1. many small flows
        n = args.flows
        with sizes.section("tp-small") as msg:
            t0 = time.perf_counter()
            runs = [client.submit(small_flow()) for _ in range(n)]
            t_sub = time.perf_counter()
            for r in runs:
                r.wait(args.timeout)
            t1 = time.perf_counter()
        out["small_flows"] = {"seconds": t1 - t0, "submit_seconds": t_sub - t0,
                              "flows_per_s": n / (t1 - t0), "steps_per_s": 3 * n / (t1 - t0),
                              "largest_message": msg}
        log(f"  tp small flows: {n} in {t1 - t0:.2f}s")

        def one_run(flow: dict[str, Any], label: str) -> dict[str, Any]:
            """Submit ``flow``, wait for it; wall and submit times, rate, message size, latency."""
            with sizes.section(label) as msg:
                t0 = time.perf_counter()
                run = client.submit(flow)
                t_sub = time.perf_counter()
                run.wait(args.timeout)
                t1 = time.perf_counter()
            details = client.engine.store.step_details(run.run_id)
            needs = needs_of(flow)
            return {"seconds": t1 - t0, "submit_seconds": t_sub - t0, "steps": len(needs),
                    "steps_per_s": len(needs) / (t1 - t0), "largest_message": msg,
                    "details": details, "needs": needs}

        # 2. fan-out with a join
        r = one_run(fanout_flow(args.fanout), "tp-fanout")
        details, needs = r.pop("details"), r.pop("needs")
        r["latency"] = {
            "members": percentiles(dispatch_latencies(details, needs, lambda s: s != "join")),
            "join": percentiles(dispatch_latencies(details, needs, lambda s: s == "join")),
        }
        out["fanout"] = r
        log(f"  tp fan-out {args.fanout}: {r['seconds']:.2f}s")

        # 3. long chain
        r = one_run(chain_flow(args.chain), "tp-chain")
        r["latency"] = percentiles(dispatch_latencies(r.pop("details"), r.pop("needs")))
        out["chain"] = r
        log(f"  tp chain {args.chain}: {r['seconds']:.2f}s")

        # 4. "N"-shaped DAG (no bare Celery equivalent without barriers)
        r = one_run(ndag_flow(args.dag_width, args.dag_layers), "tp-ndag")
        r["latency"] = percentiles(dispatch_latencies(r.pop("details"), r.pop("needs")))
        out["ndag"] = {**r, "width": args.dag_width, "layers": args.dag_layers}
        log(f"  tp N-DAG {r['steps']} steps: {r['seconds']:.2f}s")
    finally:
        worker.stop()
        close_connections(app)  # before the server goes, or the backend's pubsub reconnects at exit
    return out


def run_bare(args: argparse.Namespace, server: RedisServer, sizes: Sizes,
             log: Callable[[str], None]) -> dict[str, Any]:
    from bench import bare_app  # noqa: PLC0415

    broker = broker_url_for(server.url)
    app = bare_app.configure(broker, events=args.bare_events)
    noop = bare_app.noop
    env = {**os.environ, "BENCH_BARE_BROKER": broker, "PYTHONPATH": str(ROOT), measure.ENV: server.url,
           "BENCH_BARE_EVENTS": "1" if args.bare_events else "0",
           "BENCH_BARE_REUSE_CLIENTS": "1" if args.bare_reuse_clients else "0"}
    worker = Worker("bench-bare", "bench.bare_app", bare_app.QUEUE, env, args.pool, args.concurrency)
    out: dict[str, Any] = {}
    try:
        worker.start()
        worker.wait_ready(app)
        log(f"bare Celery worker up ({args.pool}, -c {args.concurrency}); warming up")
        for _ in range(2):
            res = [chain(noop.s(), noop.s(), noop.s()).apply_async() for _ in range(2 * args.concurrency)]
            res.append(chain(noop.si(), chord(group(noop.si() for _ in range(20)), noop.si())).apply_async())
            for r in res:
                r.get(timeout=args.timeout)

        # 1. many small flows: N chains of 3
        n = args.flows
        with sizes.section("bare-small") as msg:
            t0 = time.perf_counter()
            res = [chain(noop.s(), noop.s(), noop.s()).apply_async() for _ in range(n)]
            t_sub = time.perf_counter()
            for r in res:
                r.get(timeout=args.timeout)
            t1 = time.perf_counter()
        out["small_flows"] = {"seconds": t1 - t0, "submit_seconds": t_sub - t0,
                              "flows_per_s": n / (t1 - t0), "steps_per_s": 3 * n / (t1 - t0),
                              "largest_message": msg}
        log(f"  bare small chains: {n} in {t1 - t0:.2f}s")

        # 2. root -> chord(group of N, join)
        with sizes.section("bare-fanout") as msg:
            t0 = time.perf_counter()
            canvas = chain(noop.si(), chord(group(noop.si() for _ in range(args.fanout)), noop.si()))
            r = canvas.apply_async()
            t_sub = time.perf_counter()
            joined = r.get(timeout=args.timeout)
            t1 = time.perf_counter()
        out["fanout"] = {"seconds": t1 - t0, "submit_seconds": t_sub - t0,
                         "steps_per_s": (args.fanout + 2) / (t1 - t0), "largest_message": msg}
        with contextlib.suppress(Exception):  # latency from the tasks' own timestamps
            members = r.parent.results if hasattr(r.parent, "results") else []
            times = [m.get(timeout=10)["t"] for m in members]
            root_t = r.parent.parent.get(timeout=10)["t"] if r.parent.parent is not None else None
            lat: dict[str, Any] = {"join": percentiles([joined["t"] - max(times)])}
            if root_t is not None:
                lat["members"] = percentiles([t - root_t for t in times])
            out["fanout"]["latency"] = lat
        log(f"  bare fan-out {args.fanout}: {t1 - t0:.2f}s")

        # 3. chain of N immutable noops
        with sizes.section("bare-chain") as msg:
            t0 = time.perf_counter()
            r = chain(*(noop.si() for _ in range(args.chain))).apply_async()
            t_sub = time.perf_counter()
            r.get(timeout=args.timeout)
            t1 = time.perf_counter()
        out["chain"] = {"seconds": t1 - t0, "submit_seconds": t_sub - t0,
                        "steps_per_s": args.chain / (t1 - t0), "largest_message": msg}
        with contextlib.suppress(Exception):
            times, node = [], r
            while node is not None:
                times.append(node.get(timeout=10)["t"])
                node = node.parent
            times.reverse()
            out["chain"]["latency"] = percentiles([b - a for a, b in zip(times, times[1:], strict=False)])
        log(f"  bare chain {args.chain}: {t1 - t0:.2f}s")
    finally:
        worker.stop()
        close_connections(app)  # before the server goes, or the backend's pubsub reconnects at exit
    return out


# --- report -------------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=False)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def report(result: dict[str, Any]) -> str:
    c, tp, bare = result["config"], result["taskplatform"], result["bare"]
    shapes = [("small_flows", f"{c['flows']} flows x 3 steps"),
              ("fanout", f"fan-out 1+{c['fanout']}+1"),
              ("chain", f"chain of {c['chain']}")]
    rows = []
    for key, name in shapes:
        t, b = tp[key], bare[key]
        rows.append([name, _f(t["seconds"]), _f(b["seconds"]), _f(t["seconds"] / b["seconds"]),
                     _f(t.get("flows_per_s"), "{:.1f}"), _f(b.get("flows_per_s"), "{:.1f}"),
                     _f(t["steps_per_s"], "{:.0f}"), _f(b["steps_per_s"], "{:.0f}"),
                     _f(t["submit_seconds"], "{:.3f}"), _f(b["submit_seconds"], "{:.3f}")])
    d = tp["ndag"]
    rows.append([f"N-DAG {d['width']}x{d['layers']} ({d['steps']} steps)", _f(d["seconds"]),
                 "-", "-", "-", "-", _f(d["steps_per_s"], "{:.0f}"), "-",
                 _f(d["submit_seconds"], "{:.3f}"), "-"])
    out = [f"taskplatform vs bare Celery: pool={c['pool']} concurrency={c['concurrency']}, "
           f"{c['cpus']} CPU(s), one private Redis ({c['redis']})", "",
           table(rows, ["shape", "tp s", "bare s", "tp/bare", "tp flows/s", "bare flows/s",
                        "tp steps/s", "bare steps/s", "tp submit s", "bare submit s"]), ""]

    rows = []
    for key, name in [*shapes, ("ndag", "N-DAG")]:
        t, b = tp[key]["largest_message"], bare.get(key, {}).get("largest_message", {})
        rows.append([name, t["submitter"], t["worker"], b.get("submitter", "-"), b.get("worker", "-")])
    out += ["largest message published, bytes (JSON body + headers)", "",
            table(rows, ["shape", "tp submitter", "tp worker", "bare submitter", "bare worker"]), ""]

    rows = []

    def lat_row(name: str, p: dict[str, Any] | None) -> None:
        if p:
            rows.append([name, p["n"], _f(p["p50_ms"]), _f(p["p95_ms"]), _f(p["max_ms"])])

    lat_row("tp fan-out members (after root)", tp["fanout"]["latency"]["members"])
    lat_row("tp fan-out join (after last member)", tp["fanout"]["latency"]["join"])
    lat_row(f"tp N-DAG {d['width']}x{d['layers']}", tp["ndag"]["latency"])
    lat_row(f"tp chain of {c['chain']} (per hop)", tp["chain"]["latency"])
    bl = bare["fanout"].get("latency", {})
    lat_row("bare fan-out members (after root)", bl.get("members"))
    lat_row("bare fan-out join (after last member)", bl.get("join"))
    lat_row(f"bare chain of {c['chain']} (per hop)", bare["chain"].get("latency"))
    out += ["dispatch latency, ms: a step's start minus the latest finish of its needs", "",
            table(rows, ["steps", "n", "p50", "p95", "max"])]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (50 flows, chain of 100)")
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout (table to stderr)")
    p.add_argument("--pool", default="prefork", help="worker pool of both workers (default prefork)")
    p.add_argument("--concurrency", type=int, default=2, help="worker concurrency of both (default 2)")
    p.add_argument("--flows", type=int, help="small flows (default 300, --quick 50)")
    p.add_argument("--fanout", type=int, help="fan-out members (default 2000)")
    p.add_argument("--chain", type=int, help="chain length (default 300, --quick 100)")
    p.add_argument("--dag-width", type=int, default=4, help="N-DAG width (default 4)")
    p.add_argument("--dag-layers", type=int, default=50, help="N-DAG layers (default 50)")
    p.add_argument("--audit", action="store_true",
                   help="audit on for taskplatform (DATABASE_URL, else the SQLite default)")
    p.add_argument("--bare-events", action="store_true",
                   help="bare Celery sends task events too, like taskplatform's config")
    p.add_argument("--bare-reuse-clients", action="store_true",
                   help="bare Celery's worker gets taskplatform.transport's kombu fix too "
                        "(this process always has it)")
    p.add_argument("--timeout", type=float, help="longest wait for one shape, s (default 600, --quick 60)")
    args = p.parse_args(argv)
    args.flows = args.flows or (50 if args.quick else 300)
    args.fanout = args.fanout or 2000
    args.chain = args.chain or (100 if args.quick else 300)
    args.timeout = args.timeout or (60.0 if args.quick else 600.0)
    return args


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _detach_results() -> None:
    """Detach the bare run's settled AsyncResults from their backend.

    Celery keeps some of them referenced until exit, where ``AsyncResult.__del__`` would
    unsubscribe through a Redis that is already stopped and print a traceback.
    """
    from celery.result import AsyncResult  # noqa: PLC0415

    gc.collect()
    for obj in gc.get_objects():
        if AsyncResult in type(obj).__mro__:  # not isinstance: that evaluates Celery's lazy proxies
            obj.backend = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGHUP, _raise_on_sigterm)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import celery  # noqa: PLC0415
    import kombu  # noqa: PLC0415

    server = RedisServer()
    try:
        server.start()
        r = redis.Redis.from_url(server.url)
        redis_version = r.info("server")["redis_version"]
        log(f"redis {redis_version} on {server.url}")
        sizes = Sizes(r, SubmitterSizes())
        tp = run_taskplatform(args, server, sizes, log)
        r.flushdb()  # the bare run starts on an empty Redis too
        bare = run_bare(args, server, sizes, log)
        _detach_results()
        r.close()
    finally:
        server.stop()

    result = {
        "config": {"pool": args.pool, "concurrency": args.concurrency, "cpus": os.cpu_count(),
                   "flows": args.flows, "fanout": args.fanout, "chain": args.chain,
                   "dag_width": args.dag_width, "dag_layers": args.dag_layers, "quick": args.quick,
                   "bare_events": args.bare_events, "bare_reuse_clients": args.bare_reuse_clients,
                   "audit": args.audit,
                   "redis": f"redis {redis_version}, unix socket",
                   "python": platform.python_version(), "celery": celery.__version__,
                   "kombu": kombu.__version__},
        "taskplatform": tp,
        "bare": bare,
        "ratios": {k: tp[k]["seconds"] / bare[k]["seconds"] for k in ("small_flows", "fanout", "chain")},
        "total_seconds": time.perf_counter() - started,
    }
    text = report(result)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(result, indent=2, default=str))
    else:
        print(text)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
