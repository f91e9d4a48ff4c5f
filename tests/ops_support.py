"""Helpers for the operations tests: free ports, a `celery worker` with its ops endpoint, scraping."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ci() -> bool:
    return bool(os.environ.get("TASKPLATFORM_CI"))


def need_binary(name: str) -> str:
    """The path of a tool the test needs: skipped locally when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package; .ci/run installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def http_get(url: str, *, timeout_s: float = 5.0, headers: dict[str, str] | None = None
             ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - our loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(predicate: Any, *, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})")


class OpsWorker:
    """A `celery -A taskplatform worker` subprocess with /metrics and /health on a free port."""

    def __init__(self, redis_url: str, *, name: str, pool: str = "prefork", concurrency: int = 2,
                 queues: str = "io,cpu,plan", env: dict[str, str] | None = None,
                 loglevel: str = "INFO", log_format: str = "json") -> None:
        self.port = free_port()
        self.name = name
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}-worker.log"
        self.env = {**os.environ, "REDIS_URL": redis_url, "TASKPLATFORM_TEST_REDIS": redis_url,
                    "PYTHONPATH": str(ROOT), "EXECUTOR_METRICS_PORT": str(self.port),
                    "EXECUTOR_METRICS_HOST": "127.0.0.1", "TASKPLATFORM_LOG_FORMAT": log_format,
                    **(env or {})}
        if "PROMETHEUS_MULTIPROC_DIR" not in (env or {}):
            self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each worker gets a folder of its own
        self.argv = [sys.executable, "-m", "celery", "-A", "taskplatform", "worker", "-Q", queues,
                     "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h", "--without-mingle",
                     "--without-gossip", "-l", loglevel]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> OpsWorker:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the worker owns it until stop
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        wait_until(lambda: self.proc.poll() is None and http_get(f"{self.url}/health")[0] == 200,
                   timeout_s=timeout_s, what=f"worker {self.name} healthy (see {self.log_path})")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        self.proc = None

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = http_get(f"{self.url}/health")
        return code, json.loads(body)

    def metrics_text(self) -> str:
        code, body = http_get(f"{self.url}/metrics")
        assert code == 200, body
        return body.decode()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def ops_worker(redis_url: str, **kwargs: Any) -> Iterator[OpsWorker]:
    worker = OpsWorker(redis_url, **kwargs).start()
    try:
        yield worker
    finally:
        worker.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition into {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], sample: str, /,
          **labels: str) -> float:
    """Sum of the samples called ``sample`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in parsed.items() if n == sample and want <= set(lbl))
