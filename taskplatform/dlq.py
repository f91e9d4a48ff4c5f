"""The dead-letter store: steps that failed for good, and poison messages, kept for operators.

Why a Redis hash + sorted set and not messages on the ``dlq`` queue: an operator needs to
list, show, replay and purge entries by id and by flow, which a Redis list (what a kombu
queue is) cannot do without draining it, and anyone starting ``celery worker -Q dlq`` would
consume them. The entries live in the same Redis as the runs they belong to, so they survive
worker restarts (and Redis restarts with AOF). ``count()`` is the DLQ depth for dashboards.

A step's entry id is ``<run_id>.<step_id>``: a redelivered failure rewrites the same entry
instead of adding a second one. Inputs, errors and tracebacks are masked with
:func:`taskplatform.secrets.redact` before they are stored.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from taskplatform import defaults, secrets
from taskplatform.errors import DeadLetterNotFound
from taskplatform.state import dumps

KIND_STEP = "step"
KIND_POISON = "poison"


def step_entry_id(run_id: str, step_id: str) -> str:
    return f"{run_id}.{step_id}"


@dataclass
class DeadLetters:
    """Read and write dead-letter entries in Redis."""

    r: redis.Redis
    prefix: str = ""

    @property
    def _entries(self) -> str:
        return defaults.KEY_DLQ_ENTRIES.format(prefix=self.prefix)

    @property
    def _index(self) -> str:
        return defaults.KEY_DLQ_INDEX.format(prefix=self.prefix)

    def add_step(self, *, flow: str, run_id: str, step_id: str, action: str, queue: str | None,
                 inputs: Any, error_type: str, error: str, traceback: str | None, attempts: int,
                 first_started_at: float | None, failed_at: float) -> str:
        """Record a step that failed for good; returns its entry id."""
        entry = {
            "id": step_entry_id(run_id, step_id),
            "kind": KIND_STEP,
            "flow": flow,
            "run_id": run_id,
            "step_id": step_id,
            "action": action,
            "queue": queue,
            "inputs": secrets.redact(inputs),
            "error_type": error_type,
            "error": secrets.redact_text(error),
            "traceback": secrets.redact_text(traceback or "")[-defaults.DLQ_TRACEBACK_CHARS:] or None,
            "attempts": attempts,
            "first_started_at": first_started_at,
            "failed_at": failed_at,
            "created_at": round(time.time(), 6),
        }
        self._put(entry)
        return entry["id"]

    def add_poison(self, *, queue: str | None, reason: str, body: Any, headers: Any = None) -> str:
        """Record a message no task could run (undecodable, unknown task, bad arguments)."""
        text = body if isinstance(body, str) else repr(body)
        entry = {
            "id": f"poison.{uuid.uuid4().hex}",
            "kind": KIND_POISON,
            "flow": None,
            "queue": queue,
            "error_type": "PoisonMessage",
            "error": secrets.redact_text(reason),
            "body": secrets.redact_text(text)[: defaults.POISON_BODY_CHARS],
            "headers": secrets.redact_text(repr(headers))[: defaults.POISON_BODY_CHARS] if headers else None,
            "created_at": round(time.time(), 6),
        }
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(defaults.KEY_POISON_COUNT.format(prefix=self.prefix, run_id=queue or "unknown"))
        pipe.hset(self._entries, entry["id"], dumps(entry))
        pipe.zadd(self._index, {entry["id"]: entry["created_at"]})
        pipe.execute()
        return entry["id"]

    def _put(self, entry: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._entries, entry["id"], dumps(entry))
        pipe.zadd(self._index, {entry["id"]: entry["created_at"]})
        pipe.execute()

    def get(self, entry_id: str) -> dict[str, Any]:
        """One entry; DeadLetterNotFound if there is none."""
        raw = self.r.hget(self._entries, entry_id)
        if raw is None:
            raise DeadLetterNotFound(entry_id)
        return json.loads(raw)

    def list(self, *, flow: str | None = None, kind: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        """Entries, oldest first, optionally of one flow or kind."""
        ids = self.r.zrange(self._index, 0, -1)
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for raw in self.r.hmget(self._entries, chunk):
                if raw is None:
                    continue
                entry = json.loads(raw)
                if flow in (None, entry.get("flow")) and kind in (None, entry.get("kind")):
                    out.append(entry)
                    if len(out) >= limit:
                        return out
        return out

    def delete(self, entry_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self._entries, entry_id)
        pipe.zrem(self._index, entry_id)
        return bool(pipe.execute()[0])

    def purge(self, *, flow: str | None = None) -> int:
        """Delete every entry (of one flow); returns how many went."""
        ids = [e["id"] for e in self.list(flow=flow, limit=10**9)] if flow else None
        if ids is None:
            n = int(self.r.zcard(self._index))
            self.r.delete(self._entries, self._index)
            return n
        for i in range(0, len(ids), 500):
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(self._entries, *ids[i : i + 500])
            pipe.zrem(self._index, *ids[i : i + 500])
            pipe.execute()
        return len(ids)

    def count(self) -> int:
        return int(self.r.zcard(self._index))

    def poison_counts(self) -> dict[str, int]:
        """Poison messages seen per queue (never reset by purge)."""
        out = {}
        for q in (*defaults.QUEUES, "unknown"):
            raw = self.r.get(defaults.KEY_POISON_COUNT.format(prefix=self.prefix, run_id=q))
            if raw is not None:
                out[q] = int(raw)
        return out
