"""Run and step state in Redis: the keys of DESIGN.md, changed by atomic scripts.

Step status key ``run:{id}:task:{step}:status`` (the idempotency key) holds either a final
status (``succeeded``, ``failed``, ...), ``running:<token>`` with a lease (PX) while one
delivery runs the step, or ``retrying`` / ``waiting`` between attempts. Whoever holds the lease
runs the step; a duplicate delivery sees the lease and backs off, or sees the final status and
reuses the stored output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis

from taskplatform import defaults
from taskplatform.errors import BackendError


class RunStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED)


class StepStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self.value in FINAL_STEP_STATUSES

    @property
    def failed(self) -> bool:
        return self.value in FAILED_STEP_STATUSES


FINAL_STEP_STATUSES = frozenset(
    {"succeeded", "failed", "dead_lettered", "skipped", "upstream_failed", "canceled"}
)
FAILED_STEP_STATUSES = frozenset({"failed", "dead_lettered", "upstream_failed", "canceled"})

_FINAL_LUA = "{" + ", ".join(f"{s}=1" for s in sorted(FINAL_STEP_STATUSES)) + "}"

# KEYS: status key, run state hash, cancel key, steps hash. ARGV: token, lease_ms, now, step_id.
# Returns {"claimed", cancel reason or nil, step detail JSON or nil} | {"done", status} |
# {"busy", pttl_ms} | {"lost"} (no run state: Redis lost it). What the step needs next comes
# back with the lease: one round trip.
CLAIM_LUA = f"""
local final = {_FINAL_LUA}
if redis.call('EXISTS', KEYS[2]) == 0 then return {{'lost'}} end
local cur = redis.call('GET', KEYS[1])
if cur then
  if final[cur] then return {{'done', cur}} end
  if string.sub(cur, 1, 8) == 'running:' then
    return {{'busy', tostring(redis.call('PTTL', KEYS[1]))}}
  end
end
redis.call('SET', KEYS[1], 'running:' .. ARGV[1], 'PX', ARGV[2])
if redis.call('HGET', KEYS[2], 'status') == 'pending' then
  redis.call('HSET', KEYS[2], 'status', 'running', 'started_at', ARGV[3])
end
return {{'claimed', redis.call('GET', KEYS[3]), redis.call('HGET', KEYS[4], ARGV[4])}}
"""

# KEYS: status key, remaining hash, settled counter, steps hash, outputs hash.
# ARGV: status, ttl_s, step_id, detail_json, output_json ("" for none), dependents...
# Returns {1, settled_count, ready...} the first time a step settles, {0, current} after.
# The output is stored with the status (only by the first settle): nobody sees one without the other.
SETTLE_LUA = f"""
local final = {_FINAL_LUA}
local cur = redis.call('GET', KEYS[1])
if cur and final[cur] then return {{0, cur}} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[5])
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
local out = {{1, 0}}
for i = 6, #ARGV do
  if redis.call('HINCRBY', KEYS[2], ARGV[i], -1) == 0 then out[#out + 1] = ARGV[i] end
end
out[2] = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
return out
"""

# KEYS: run state hash, done list, active runs. ARGV: ttl_s, run_id, then field/value pairs.
# Sets the terminal status once; returns 1 the first time, 0 after.
FINISH_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('RPUSH', KEYS[2], 'done')
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Claim:
    """Outcome of trying to take a step's lease."""

    outcome: str  # "claimed", "done", "busy" or "lost"
    status: str | None = None  # final status when done
    retry_in_s: float = 0.0  # lease left when busy
    cancel: str | None = None  # when claimed: the run's cancel reason, if one was asked for
    detail: dict[str, Any] = field(default_factory=dict)  # when claimed: the step's detail so far


@dataclass
class Settled:
    """Outcome of settling a step."""

    first: bool
    settled_count: int = 0
    ready: list[str] = field(default_factory=list)
    status: str | None = None


class RunStore:
    """Reads and writes the state of runs in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "", ttl_s: int = defaults.RUN_TTL_S) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._finish = client.register_script(FINISH_LUA)

    # keys
    def key(self, fmt: str, run_id: str, step_id: str = "") -> str:
        return fmt.format(prefix=self.prefix, run_id=run_id, step_id=step_id)

    def status_key(self, run_id: str, step_id: str) -> str:
        return self.key(defaults.KEY_STEP_STATUS, run_id, step_id)

    # runs
    def create_run(self, run_id: str, spec: dict[str, Any], state: dict[str, Any],
                   remaining: dict[str, int]) -> bool:
        """Write a new run atomically; False if a run with this id exists already."""
        state_key = self.key(defaults.KEY_RUN_STATE, run_id)
        fields = {k: v if isinstance(v, str) else dumps(v) for k, v in state.items() if v is not None}
        if not self.r.hsetnx(state_key, "run_id", run_id):
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.key(defaults.KEY_RUN_SPEC, run_id), dumps(spec), ex=self.ttl_s)
        if remaining:
            rem_key = self.key(defaults.KEY_RUN_REMAINING, run_id)
            pipe.hset(rem_key, mapping=remaining)
            pipe.expire(rem_key, self.ttl_s)
        pipe.hset(state_key, mapping=fields)
        pipe.expire(state_key, self.ttl_s)
        pipe.zadd(self.key(defaults.KEY_RUN_INDEX, run_id), {run_id: time.time()})
        pipe.zadd(self.key(defaults.KEY_RUNS_ACTIVE, run_id), {run_id: time.time()})
        pipe.execute()
        return True

    def load_spec(self, run_id: str) -> dict[str, Any] | None:
        raw = self.r.get(self.key(defaults.KEY_RUN_SPEC, run_id))
        return json.loads(raw) if raw is not None else None

    def run_state(self, run_id: str) -> dict[str, str]:
        data = self.r.hgetall(self.key(defaults.KEY_RUN_STATE, run_id))
        return {_s(k): _s(v) for k, v in data.items()}

    def step_details(self, run_id: str) -> dict[str, dict[str, Any]]:
        data = self.r.hgetall(self.key(defaults.KEY_RUN_STEPS, run_id))
        return {_s(k): json.loads(v) for k, v in data.items()}

    def step_detail(self, run_id: str, step_id: str) -> dict[str, Any]:
        raw = self.r.hget(self.key(defaults.KEY_RUN_STEPS, run_id), step_id)
        return json.loads(raw) if raw else {}

    def set_step_detail(self, run_id: str, step_id: str, detail: dict[str, Any]) -> None:
        key = self.key(defaults.KEY_RUN_STEPS, run_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, step_id, dumps(detail))
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def statuses(self, run_id: str, step_ids: Iterable[str]) -> dict[str, str]:
        """Current status of each step (``pending`` when nothing is recorded)."""
        ids = list(step_ids)
        if not ids:
            return {}
        return _decode_statuses(ids, self.r.mget([self.status_key(run_id, s) for s in ids]))

    def read_steps(self, run_id: str, step_ids: Iterable[str], *, outputs: bool = True,
                   cancel: bool = False) -> tuple[dict[str, str], dict[str, Any], str | None]:
        """Statuses and outputs of ``step_ids`` (and the cancel reason) in one round trip."""
        ids = list(step_ids)
        outputs = outputs and bool(ids)
        if not ids and not cancel:
            return {}, {}, None
        pipe = self.r.pipeline(transaction=False)
        if ids:
            pipe.mget([self.status_key(run_id, s) for s in ids])
        if outputs:
            pipe.hmget(self.key(defaults.KEY_RUN_OUTPUTS, run_id), ids)
        if cancel:
            pipe.get(self.key(defaults.KEY_RUN_CANCEL, run_id))
        replies = iter(pipe.execute())
        statuses = _decode_statuses(ids, next(replies)) if ids else {}
        outs = ({sid: json.loads(v) for sid, v in zip(ids, next(replies), strict=True) if v is not None}
                if outputs else {})
        reason = next(replies) if cancel else None
        return statuses, outs, (_s(reason) if reason is not None else None)

    def outputs(self, run_id: str, step_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Stored outputs, decoded; all steps when ``step_ids`` is None."""
        key = self.key(defaults.KEY_RUN_OUTPUTS, run_id)
        if step_ids is None:
            return {_s(k): json.loads(v) for k, v in self.r.hgetall(key).items()}
        ids = list(step_ids)
        if not ids:
            return {}
        values = self.r.hmget(key, ids)
        return {sid: json.loads(v) for sid, v in zip(ids, values, strict=True) if v is not None}

    # steps
    def claim(self, run_id: str, step_id: str, token: str, lease_s: float) -> Claim:
        res = self._claim(
            keys=[self.status_key(run_id, step_id), self.key(defaults.KEY_RUN_STATE, run_id),
                  self.key(defaults.KEY_RUN_CANCEL, run_id), self.key(defaults.KEY_RUN_STEPS, run_id)],
            args=[token, int(lease_s * 1000), f"{time.time():.6f}", step_id],
        )
        outcome = _s(res[0])
        if outcome == "lost":
            return Claim("lost")
        if outcome == "done":
            return Claim("done", status=_s(res[1]))
        if outcome == "busy":
            return Claim("busy", retry_in_s=max(0.05, int(res[1]) / 1000))
        _, cancel, detail = res
        return Claim("claimed", cancel=_s(cancel) if cancel is not None else None,
                     detail=json.loads(detail) if detail else {})

    def release(self, run_id: str, step_id: str, status: StepStatus) -> None:
        """Give up the lease between attempts (``retrying``) or while waiting (``waiting``)."""
        self.r.set(self.status_key(run_id, step_id), status.value, ex=self.ttl_s)

    def settle(self, run_id: str, step_id: str, status: StepStatus, detail: dict[str, Any],
               dependents: Iterable[str], *, output_json: str | None = None) -> Settled:
        """Record a final status (and the step's output) once; count down ``dependents``' needs."""
        res = self._settle(
            keys=[
                self.status_key(run_id, step_id),
                self.key(defaults.KEY_RUN_REMAINING, run_id),
                self.key(defaults.KEY_RUN_SETTLED, run_id),
                self.key(defaults.KEY_RUN_STEPS, run_id),
                self.key(defaults.KEY_RUN_OUTPUTS, run_id),
            ],
            args=[status.value, self.ttl_s, step_id, dumps(detail), output_json or "", *dependents],
        )
        if int(res[0]) == 0:
            return Settled(first=False, status=_s(res[1]))
        return Settled(first=True, settled_count=int(res[1]), ready=[_s(x) for x in res[2:]],
                       status=status.value)

    def settled_count(self, run_id: str) -> int:
        return int(self.r.get(self.key(defaults.KEY_RUN_SETTLED, run_id)) or 0)

    def remaining(self, run_id: str, step_ids: Iterable[str]) -> dict[str, int]:
        ids = list(step_ids)
        if not ids:
            return {}
        vals = self.r.hmget(self.key(defaults.KEY_RUN_REMAINING, run_id), ids)
        return {sid: int(v) if v is not None else 0 for sid, v in zip(ids, vals, strict=False)}

    def finish(self, run_id: str, fields: dict[str, Any]) -> bool:
        """Set the run's terminal fields once; True only for the caller that did it."""
        args: list[Any] = [self.ttl_s, run_id]
        for k, v in fields.items():
            if v is not None:
                args += [k, v if isinstance(v, str) else dumps(v)]
        return bool(self._finish(
            keys=[self.key(defaults.KEY_RUN_STATE, run_id), self.key(defaults.KEY_RUN_DONE, run_id),
                  self.key(defaults.KEY_RUNS_ACTIVE, run_id)],
            args=args,
        ))

    def raw_statuses(self, run_id: str, step_ids: Iterable[str]) -> dict[str, str | None]:
        """The status keys as stored (``running:<token>`` included; None when absent)."""
        ids = list(step_ids)
        values = self.r.mget([self.status_key(run_id, s) for s in ids]) if ids else []
        return {sid: (_s(v) if v is not None else None) for sid, v in zip(ids, values, strict=False)}

    def active_runs(self, limit: int = 10_000) -> list[str]:
        """Runs not yet terminal, oldest first (what recovery looks at)."""
        key = self.key(defaults.KEY_RUNS_ACTIVE, "")
        return [_s(x) for x in self.r.zrange(key, 0, limit - 1)]

    def forget_active(self, run_id: str) -> None:
        self.r.zrem(self.key(defaults.KEY_RUNS_ACTIVE, ""), run_id)

    # cancel
    def request_cancel(self, run_id: str, reason: str) -> None:
        self.r.set(self.key(defaults.KEY_RUN_CANCEL, run_id), reason, ex=self.ttl_s)

    def cancel_requested(self, run_id: str) -> str | None:
        raw = self.r.get(self.key(defaults.KEY_RUN_CANCEL, run_id))
        return _s(raw) if raw is not None else None

    # recovery marks
    def recovered_at(self, run_id: str) -> dict[str, float]:
        data = self.r.hgetall(self.key(defaults.KEY_RUN_RECOVERED, run_id))
        return {_s(k): float(v) for k, v in data.items()}

    def mark_recovered(self, run_id: str, step_ids: Iterable[str]) -> None:
        ids = list(step_ids)
        if not ids:
            return
        key = self.key(defaults.KEY_RUN_RECOVERED, run_id)
        now = f"{time.time():.6f}"
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, mapping={s: now for s in ids})
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def reopen(self, run_id: str, steps: dict[str, int], details: dict[str, dict[str, Any]],
               unsettled: int) -> None:
        """Make finished (or failed) steps runnable again: ``steps`` maps step -> needs left.

        One transaction: status keys and outputs of ``steps`` go, their needs counters and
        details are rewritten, the settled counter drops by ``unsettled`` (the steps of
        ``steps`` that had settled), and the run is ``running`` again.
        """
        state_key = self.key(defaults.KEY_RUN_STATE, run_id)
        rem_key = self.key(defaults.KEY_RUN_REMAINING, run_id)
        pipe = self.r.pipeline(transaction=True)
        for sid in steps:
            pipe.delete(self.status_key(run_id, sid))
        if steps:
            pipe.hdel(self.key(defaults.KEY_RUN_OUTPUTS, run_id), *steps)
            pipe.hdel(self.key(defaults.KEY_RUN_RECOVERED, run_id), *steps)
            pipe.hset(rem_key, mapping=steps)
            pipe.expire(rem_key, self.ttl_s)
            pipe.hset(self.key(defaults.KEY_RUN_STEPS, run_id),
                      mapping={s: dumps(d) for s, d in details.items()})
        pipe.decrby(self.key(defaults.KEY_RUN_SETTLED, run_id), unsettled)
        pipe.hdel(state_key, "error", "failed_step", "finished_at", "outputs")
        pipe.hset(state_key, mapping={"status": RunStatus.RUNNING.value, "resumed_at": f"{time.time():.6f}"})
        pipe.expire(state_key, self.ttl_s)
        pipe.delete(self.key(defaults.KEY_RUN_DONE, run_id), self.key(defaults.KEY_RUN_CANCEL, run_id))
        pipe.zadd(self.key(defaults.KEY_RUNS_ACTIVE, ""), {run_id: time.time()})
        pipe.execute()

    def wait_done(self, run_id: str, block_s: float) -> bool:
        """Block up to ``block_s`` for the run's done token; non-destructive (BLMOVE to itself)."""
        key = self.key(defaults.KEY_RUN_DONE, run_id)
        got = self.r.blmove(key, key, timeout=block_s, src="RIGHT", dest="LEFT")
        return got is not None

    def recent_runs(self, limit: int = 50) -> list[str]:
        return [_s(x) for x in self.r.zrevrange(self.key(defaults.KEY_RUN_INDEX, ""), 0, limit - 1)]


def _decode_statuses(ids: list[str], values: list[Any]) -> dict[str, str]:
    out = {}
    for sid, v in zip(ids, values, strict=True):
        text = _s(v) if v is not None else StepStatus.PENDING.value
        out[sid] = StepStatus.RUNNING.value if text.startswith("running:") else text
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def translate_redis_errors(exc: Exception) -> BackendError:
    """Map a redis-py exception to BackendError with a readable reason."""
    if isinstance(exc, redis.AuthenticationError):
        return BackendError(f"Redis refused our credentials: {exc}")
    if isinstance(exc, redis.ConnectionError):
        return BackendError(f"cannot reach Redis: {exc}")
    if isinstance(exc, redis.TimeoutError):
        return BackendError(f"Redis timed out: {exc}")
    return BackendError(f"Redis error: {type(exc).__name__}: {exc}")
