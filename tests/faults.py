"""Fault-test helpers: a counting HTTP server, and `celery worker` / `celery beat` process groups.

Every server is ours: the Redis is a private `RedisServer`, the HTTP server binds 127.0.0.1 on
a free port. Worker processes start in their own session so a test can kill -9 the group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.localhttp import JSONHandler, LocalHTTPServer

ROOT = Path(__file__).resolve().parent.parent


class _Handler(JSONHandler):
    def do_GET(self):  # noqa: N802
        self._handle()

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._handle()

    def _handle(self) -> None:
        owner: CountingServer = self.server.owner  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        key = q.get("key", "")
        status, payload = owner.answer(parts.path, key, q, self.headers.get("Idempotency-Key"))
        delay = float(q.get("delay_s", 0))
        if delay:
            time.sleep(delay)
        self._send(status, payload)


class CountingServer(LocalHTTPServer):
    """Counts hits per key and applies each Idempotency-Key's effect once.

    ``/hit``: 200 (a side effect). ``/flaky?fail=N&status=S``: S for the first N hits of a key,
    then 200. ``/perm``: 400 until :attr:`fixed`, then 200. ``delay_s`` holds the answer.
    """

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.hit_times: dict[str, list[float]] = defaultdict(list)
        self.effects: Counter[str] = Counter()  # applied effects per idempotency key
        self.fixed = False

    def answer(self, path: str, key: str, q: dict[str, str], idem: str | None) -> tuple[int, dict]:
        with self.lock:
            self.hits[key] += 1
            self.hit_times[key].append(time.monotonic())
            n = self.hits[key]
            if path == "/flaky" and n <= int(q.get("fail", 0)):
                return int(q.get("status", 503)), {"hit": n, "error": "try again"}
            if path == "/perm" and not self.fixed:
                return 400, {"hit": n, "error": "bad request"}
            applied = False
            if idem is not None and self.effects[idem] == 0:
                applied = True
            if idem is not None:
                self.effects[idem] += 1 if applied else 0
            return 200, {"hit": n, "applied": applied}


class Workers:
    """One `celery -A taskplatform worker` (prefork) in its own session; kill -9 friendly."""

    def __init__(self, env: dict[str, str], log_path: Path, *, name: str, concurrency: int = 4,
                 queues: str = "io,cpu,plan") -> None:
        self.env, self.log_path, self.name = env, log_path, name
        self.concurrency, self.queues = concurrency, queues
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Workers:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "taskplatform", "worker", "-Q", self.queues,
             "-P", "prefork", "-c", str(self.concurrency), "-n", f"{self.name}-{self.starts}@%h",
             "--without-mingle", "--without-gossip", "-l", "WARNING"],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        """Pool child pids of the worker's main process."""
        out: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_group(self) -> None:
        """kill -9 of the whole process group: main process and every pool child."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill_group()


class Beat:
    """`celery -A taskplatform beat` (the recovery sweep's schedule)."""

    def __init__(self, env: dict[str, str], log_path: Path, schedule_dir: Path) -> None:
        log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "taskplatform", "beat", "-l", "WARNING",
             "-s", str(schedule_dir / "beat-schedule"), "--pidfile", ""],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def wait_for_workers(app, n: int = 1, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= n:
            return
    raise AssertionError(f"{n} worker(s) did not answer a ping within {timeout_s:g}s")
