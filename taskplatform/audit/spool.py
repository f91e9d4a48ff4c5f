"""The Redis spool between signal handlers and the database, and the drainer that empties it.

Handlers never write to the database themselves: they append an event to one Redis list
(microseconds, and it survives the process). A drainer thread in each process that emits
events takes the spool's lock, writes up to a batch of events in one transaction, trims what
it wrote, and lets go. One drainer at a time keeps the order; upserts make a batch written
twice (a drainer died between commit and trim) harmless. While the database is down the
events wait in Redis, and are written in order when it is back. If Redis itself refuses the
event (its reply is read at the next push, not waited for), it is written to the database directly.

A long outage must not fill Redis (it is the broker too, on ``noeviction``): a worker's audit
writer (``overflow_dir`` set) keeps the spool under ``spool_max`` events by moving the oldest
to files on its host, and registers the host in ``audit:spool:overflow``. When the database is
back it writes those files first; other drainers leave the spool alone meanwhile, so the
order holds (unless that host stops heartbeating for ``AUDIT_OVERFLOW_STALE_S``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from taskplatform import defaults, secrets
from taskplatform.audit import db, events, sweeper
from taskplatform.errors import AuditSchemaError, BackendError

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Trim what was written only while still holding the lock: a drainer whose lock expired
# mid-batch must not trim events another drainer read after it (they would be lost).
_TRIM = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('ltrim', KEYS[2], tonumber(ARGV[2]), -1)
redis.call('expire', KEYS[1], tonumber(ARGV[3]))
return 1
"""


#: False in prefork pool children: they only spool, and the worker's main process (mostly
#: idle) drains, so database writes never compete with steps for a child's time.
DRAIN_IN_THIS_PROCESS = True


@dataclass
class Counters:
    """What a sink did, for tests and metrics."""

    spooled: int = 0
    written: int = 0
    direct: int = 0
    dropped: int = 0
    db_errors: int = 0
    swept: int = 0
    spilled: int = 0  # events moved from the spool to overflow files
    replayed: int = 0  # events written from overflow files


class AuditSink:
    """Spools audit events for one database and Redis, and drains them in a thread."""

    def __init__(self, url: str, redis_url: str, *, prefix: str = "", sweep: bool = False,
                 spool_max: int = defaults.AUDIT_SPOOL_MAX_EVENTS, overflow_dir: Path | None = None) -> None:
        from taskplatform.config import client_url_for  # noqa: PLC0415

        self.url = url
        self.redis = redis.Redis.from_url(client_url_for(redis_url), socket_connect_timeout=5,
                                          health_check_interval=30)
        self.key = defaults.KEY_AUDIT_SPOOL.format(prefix=prefix)
        self.lock_key = defaults.KEY_AUDIT_LOCK.format(prefix=prefix)
        self.overflow_key = defaults.KEY_AUDIT_OVERFLOW.format(prefix=prefix)
        self.spool_max = spool_max
        self.overflow_dir = overflow_dir  # None: this sink never spills (only worker writers do)
        self._overflow_id: str | None = None
        self.sweep = sweep
        self.counters = Counters()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._release = self.redis.register_script(_RELEASE)
        self._trim = self.redis.register_script(_TRIM)
        self._last_sweep = 0.0
        self._schema_error_logged = False
        self._down = False

    # --- emit ---------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Spool one event (already masked); the drainer writes it soon after."""
        payload = json.dumps(event, default=str, separators=(",", ":"))
        try:
            self._push(payload)
            self.counters.spooled += 1
        except redis.RedisError:
            log.warning("audit spool unreachable; writing the %s event directly", event["kind"])
            self._write_direct(event)
        if DRAIN_IN_THIS_PROCESS:  # it looks every AUDIT_DRAIN_IDLE_S: batches, not one by one
            self._ensure_thread()

    def _push(self, payload: str) -> None:
        """RPUSH on a connection of this thread's own, without waiting for Redis's reply.

        Steps pay for this on their path: a bare connection costs ~15 us of CPU per command
        where the redis-py client (pool, retries, observability hooks) costs ~100 us, and the
        reply is read at the next push (it has long arrived by then) instead of blocking now.
        A reply that is an error (Redis out of memory, say) sends that event to the database
        directly; a connection lost with replies unread pushes those events again (applying
        an event twice is harmless).
        """
        conn, unread = self._connection()
        try:
            self._read_replies(conn, unread)
            conn.send_command("RPUSH", self.key, payload)
            unread.append(payload)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            self._local.conn = None
        again = [*unread, payload]  # a connection the server dropped is remade once
        unread.clear()
        conn, _ = self._connection()
        try:
            for p in again:
                conn.send_command("RPUSH", self.key, p)
            self._read_replies(conn, list(again))
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            self._local.conn = None
            for p in again[:-1]:  # the caller writes ``payload`` itself
                self._write_direct(json.loads(p))
            raise

    def _connection(self) -> tuple[Any, list[str]]:
        """This thread's bare connection and the pushes on it whose replies are unread."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never a parent's socket
            conn = self.redis.connection_pool.make_connection()
            conn.health_check_interval = 0  # a PING would read our unread replies as its own
            self._local.conn, self._local.pid, self._local.unread = conn, os.getpid(), []
            with self._conns_lock:
                self._conns.append((os.getpid(), conn, self._local.unread))
        return conn, self._local.unread

    def _read_replies(self, conn: Any, unread: list[str]) -> None:
        """Read the replies of earlier pushes; an event Redis refused goes to the database."""
        while unread:
            try:
                conn.read_response()
            except redis.ResponseError as exc:
                log.warning("audit spool refused an event (%s); writing it directly", exc)
                self._write_direct(json.loads(unread[0]))
            unread.pop(0)

    def _settle_replies(self) -> None:
        """Read every connection's unread replies (at close: the threads are done pushing)."""
        with self._conns_lock:  # a forked child must not read its parent's socket
            conns = [(c, u) for pid, c, u in self._conns if pid == os.getpid()]
        for conn, unread in conns:
            try:
                self._read_replies(conn, unread)
            except (redis.ConnectionError, redis.TimeoutError):
                for p in unread:  # unknown whether Redis has them: written twice is harmless
                    self._write_direct(json.loads(p))
                unread.clear()

    def _write_direct(self, event: dict[str, Any]) -> None:
        try:
            with db.get_engine(self.url).begin() as conn:
                events.apply(conn, event)
            self.counters.direct += 1
        except SQLAlchemyError:
            self.counters.dropped += 1
            log.error("audit event lost: neither Redis nor the database took it (%s %s)",
                      event["kind"], event.get("run_id"), exc_info=True)

    # --- drain --------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="taskplatform-audit", daemon=True)
        self._thread.start()

    def start(self) -> AuditSink:
        """Start the drainer now (a worker's main process does, to sweep)."""
        self._ensure_thread()
        return self

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff or defaults.AUDIT_DRAIN_IDLE_S)
            self._wake.clear()
            try:
                self._heartbeat_overflow()
                self.drain()
                if self.sweep and time.time() - self._last_sweep > defaults.AUDIT_SWEEP_INTERVAL_S:
                    self._last_sweep = time.time()
                    self.run_sweep()
                backoff = 0.0
                if self._down:
                    self._down = False
                    log.warning("audit writes succeed again; spooled events written")
            except (SQLAlchemyError, BackendError, AuditSchemaError, redis.RedisError) as exc:
                self.counters.db_errors += 1
                backoff = min(defaults.AUDIT_BACKOFF_MAX_S, max(0.2, backoff * 2))
                if isinstance(exc, AuditSchemaError):
                    if not self._schema_error_logged:
                        log.error("audit paused: %s", exc)
                        self._schema_error_logged = True
                elif not self._down:  # once per outage, not once per retry
                    self._down = True
                    log.warning("audit write failed (%s: %s): events stay spooled in Redis and "
                                "are written once it succeeds", type(exc).__name__,
                                str(exc).splitlines()[0][:200])
                if not isinstance(exc, redis.RedisError):
                    self._spill_guarded()
            except Exception:  # noqa: BLE001 - the drainer must outlive any surprise
                self.counters.db_errors += 1
                backoff = defaults.AUDIT_BACKOFF_MAX_S
                log.exception("audit drainer error")

    def drain(self, max_batches: int | None = None) -> int:
        """Write spooled events in order while this process holds the lock; returns how many."""
        token = uuid.uuid4().hex
        if not self.redis.set(self.lock_key, token, nx=True, ex=defaults.AUDIT_LOCK_TTL_S):
            return 0
        written = 0
        try:
            db.check_schema(self.url)
            written += self._replay_overflow()
            if self._held_by_other_overflow():
                return written  # older events wait on another host's disk: they go first
            batches = 0
            while max_batches is None or batches < max_batches:
                raw = self.redis.lrange(self.key, 0, defaults.AUDIT_BATCH_SIZE - 1)
                if not raw:
                    break
                self._write_batch([json.loads(r) for r in raw])
                if not self._trim(keys=[self.lock_key, self.key],
                                  args=[token, len(raw), defaults.AUDIT_LOCK_TTL_S]):
                    log.warning("audit drainer lost its lock mid-batch; another one goes on")
                    break
                written += len(raw)
                batches += 1
        finally:
            self._release(keys=[self.lock_key], args=[token])
        self.counters.written += written
        return written

    def _fill_outputs(self, batch: list[dict[str, Any]]) -> None:
        """Read the outputs settled events point at, in one round trip, bounded and masked.

        The step stored its output already masked (runtime.py); ``redact`` here masks what
        this process knows too.
        """
        wanted = [e for e in batch if e.get("output_key")]
        if not wanted:
            return
        pipe = self.redis.pipeline(transaction=False)
        for e in wanted:
            pipe.hget(e["output_key"], e["step_id"])
        for e, raw in zip(wanted, pipe.execute(), strict=True):
            del e["output_key"]
            if raw is not None:
                e["output_data"], e["output_truncated"] = events.bounded(secrets.redact(json.loads(raw)))

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        self._fill_outputs(batch)
        engine = db.get_engine(self.url)
        try:
            with engine.begin() as conn:
                events.apply_batch(conn, batch)
        except OperationalError:
            raise  # the database is away: keep the batch for later
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # A bad event must not block the spool: write one by one and skip the bad ones.
            log.warning("audit batch rejected (%s); writing its events one by one",
                        type(exc.orig).__name__)
            self._write_one_by_one(engine, batch)

    def _write_one_by_one(self, engine: Any, batch: Iterable[dict[str, Any]]) -> None:
        for event in batch:
            try:
                with engine.begin() as conn:
                    events.apply(conn, event)
            except OperationalError:
                raise
            except DBAPIError:
                self.counters.dropped += 1
                log.error("audit event rejected by the database and skipped: %s %s",
                          event.get("kind"), event.get("run_id"), exc_info=True)

    # --- overflow to disk ----------------------------------------------------------------------

    def overflow_files(self) -> list[Path]:
        """This host's overflow files, oldest first (named by their creation time)."""
        if self.overflow_dir is None or not self.overflow_dir.is_dir():
            return []
        return sorted(self.overflow_dir.glob("*.jsonl"))

    @property
    def _overflow_field(self) -> str:
        """The overflow folder's identity in Redis: an id kept in the folder, so that writers
        sharing one folder (containers on one volume) share one entry."""
        if self._overflow_id is None:
            assert self.overflow_dir is not None
            self.overflow_dir.mkdir(parents=True, exist_ok=True)
            marker = self.overflow_dir / ".id"
            if not marker.exists():
                tmp = self.overflow_dir / f".id.{os.getpid()}"
                tmp.write_text(f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}")
                try:
                    os.link(tmp, marker)  # create-if-absent: a writer racing us keeps its id
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink()
            self._overflow_id = marker.read_text().strip()
        return self._overflow_id

    def _heartbeat_overflow(self) -> None:
        if self.overflow_files():
            self.redis.hset(self.overflow_key, self._overflow_field, f"{time.time():.3f}")

    def _held_by_other_overflow(self) -> bool:
        """Whether another folder (heartbeating) still has older events in overflow files."""
        now = time.time()
        mine = self._overflow_field if self.overflow_dir is not None else None
        for field, beat in self.redis.hgetall(self.overflow_key).items():
            if field.decode() != mine and now - float(beat) < defaults.AUDIT_OVERFLOW_STALE_S:
                return True
        return False

    def _spill_guarded(self) -> None:
        if self.overflow_dir is None:
            return
        try:
            self.spill()
        except (OSError, redis.RedisError):
            log.exception("audit spool could not move events to %s", self.overflow_dir)

    def spill(self) -> int:
        """Move the oldest events to overflow files until the spool is back under 80% of its
        cap; returns how many moved. Called while the database is away."""
        if self.overflow_dir is None or self.redis.llen(self.key) <= self.spool_max:
            return 0
        token = uuid.uuid4().hex
        if not self.redis.set(self.lock_key, token, nx=True, ex=defaults.AUDIT_LOCK_TTL_S):
            return 0
        moved = 0
        try:
            self.overflow_dir.mkdir(parents=True, exist_ok=True)
            low = int(self.spool_max * 0.8)
            while (extra := self.redis.llen(self.key) - low) > 0:
                raw = self.redis.lrange(self.key, 0, min(extra, defaults.AUDIT_SPILL_CHUNK) - 1)
                batch = [json.loads(r) for r in raw]
                self._fill_outputs(batch)  # now, while Redis still has the outputs
                self.redis.hset(self.overflow_key, self._overflow_field, f"{time.time():.3f}")
                final = self.overflow_dir / f"{time.time_ns()}-{os.getpid()}.jsonl"
                tmp = final.with_suffix(".tmp")
                with open(tmp, "w", encoding="utf-8") as fh:  # whole or not at all (a crash leaves a .tmp)
                    fh.writelines(json.dumps(e, default=str, separators=(",", ":")) + "\n" for e in batch)
                    fh.flush()
                    os.fsync(fh.fileno())
                tmp.rename(final)
                if not self._trim(keys=[self.lock_key, self.key],
                                  args=[token, len(raw), defaults.AUDIT_LOCK_TTL_S]):
                    break  # lost the lock: these events are in a file and the spool (twice is harmless)
                moved += len(raw)
        finally:
            self._release(keys=[self.lock_key], args=[token])
        if moved:
            self.counters.spilled += moved
            log.warning("audit database away and the spool past its cap of %d events: moved the "
                        "oldest %d to %s", self.spool_max, moved, self.overflow_dir)
        return moved

    def _replay_overflow(self) -> int:
        """Write this host's overflow files (under the spool lock), oldest first."""
        written = 0
        files = self.overflow_files()
        for path in files:
            batch: list[dict[str, Any]] = []
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        batch.append(json.loads(line))
                    if len(batch) >= defaults.AUDIT_BATCH_SIZE:
                        self._write_batch(batch)
                        written, batch = written + len(batch), []
            if batch:
                self._write_batch(batch)
                written += len(batch)
            path.unlink()  # a crash before this writes the file again: upserts make it harmless
        if files:
            self.redis.hdel(self.overflow_key, self._overflow_field)
            self.counters.replayed += written
            log.warning("audit overflow written: %d events from %d file(s)", written, len(files))
        return written

    def run_sweep(self, now_s: float | None = None) -> int:
        """Settle attempts left ``started`` past their deadline (after the spool is empty)."""
        if self.redis.llen(self.key):
            return 0
        with db.get_engine(self.url).begin() as conn:
            n = sweeper.sweep(conn, now_s=now_s)
        self.counters.swept += n
        return n

    def pending(self) -> int:
        """Events spooled and not yet written."""
        return int(self.redis.llen(self.key))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything spooled now, from this thread; True when the spool is empty."""
        if getattr(self._local, "conn", None) is not None and self._local.pid == os.getpid():
            self._read_replies(self._local.conn, self._local.unread)  # this thread's own pushes
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.drain()
                if self.pending() == 0 and not self.redis.exists(self.lock_key):
                    return True
            except (SQLAlchemyError, BackendError, redis.RedisError):
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def close(self, *, flush_s: float = 0.0) -> None:
        """Stop the drainer (after writing what is spooled, for up to ``flush_s``)."""
        self._settle_replies()
        if flush_s:
            self.flush(flush_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        self._thread = None
        with self._conns_lock:
            for _, conn, _ in self._conns:
                conn.disconnect()
            self._conns.clear()
        self.redis.close()


_sinks: dict[tuple[int, str, str, str], AuditSink] = {}
_sinks_lock = threading.Lock()


def sink_for(url: str, redis_url: str, *, prefix: str = "", sweep: bool = False) -> AuditSink:
    """This process's sink for a database and a Redis (made on first use)."""
    key = (os.getpid(), url, redis_url, prefix)
    sink = _sinks.get(key)
    if sink is None:
        with _sinks_lock:
            sink = _sinks.get(key)
            if sink is None:
                sink = AuditSink(url, redis_url, prefix=prefix, sweep=sweep)
                _sinks[key] = sink
    if sweep:
        sink.sweep = True
    return sink


def close_sinks(*, redis_url: str | None = None, flush_s: float = 0.0) -> None:
    """Stop this process's sinks (those on ``redis_url`` only, when given)."""
    with _sinks_lock:
        chosen = [(k, s) for k, s in _sinks.items()
                  if k[0] == os.getpid() and (redis_url is None or k[2] == redis_url)]
        for k, _ in chosen:
            del _sinks[k]
    for _, sink in chosen:
        try:
            sink.close(flush_s=flush_s)
        except Exception:  # noqa: BLE001 - best effort on the way out
            log.debug("closing an audit sink failed", exc_info=True)


def flush_all(timeout_s: float = 10.0) -> bool:
    """Flush every sink of this process; True when all are empty."""
    return all(s.flush(timeout_s) for k, s in list(_sinks.items()) if k[0] == os.getpid())


def flush_pending(settings: Any, timeout_s: float = 3.0) -> bool:
    """Best effort, before a read: write what the spool of ``settings``' Redis still holds.

    False when there is no Redis to read, or the spool did not empty in time.
    """
    if not settings.audit or not settings.redis_url:
        return False
    try:
        sink = sink_for(db.database_url(settings.database_url), settings.redis_url,
                        prefix=settings.key_prefix)
        return sink.flush(timeout_s)
    except (redis.RedisError, SQLAlchemyError, BackendError):
        return False
