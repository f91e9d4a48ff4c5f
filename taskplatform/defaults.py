"""Every default, name and key format in one place, with its unit (rq's ``defaults.py``)."""

from __future__ import annotations

# Queues. ``dlq`` has no consumer by default: an operator drains it.
QUEUE_IO = "io"
QUEUE_CPU = "cpu"
QUEUE_PLAN = "plan"
QUEUE_DLQ = "dlq"
QUEUES = (QUEUE_IO, QUEUE_CPU, QUEUE_PLAN, QUEUE_DLQ)
WORK_QUEUES = (QUEUE_IO, QUEUE_CPU, QUEUE_PLAN)

# Redis keys (contract names from DESIGN.md; ``{prefix}`` is empty by default).
KEY_RUN_STATE = "{prefix}run:{run_id}:state"  # hash: status, flow, timestamps, outputs, error
KEY_RUN_OUTPUTS = "{prefix}run:{run_id}:outputs"  # hash: step_id -> JSON output
KEY_STEP_STATUS = "{prefix}run:{run_id}:task:{step_id}:status"  # idempotency key
KEY_RUN_SPEC = "{prefix}run:{run_id}:spec"  # frozen flow spec, inputs and context (JSON)
KEY_RUN_STEPS = "{prefix}run:{run_id}:steps"  # hash: step_id -> JSON detail (attempts, error, times)
KEY_RUN_REMAINING = "{prefix}run:{run_id}:remaining"  # hash: step_id -> needs not yet settled
KEY_RUN_SETTLED = "{prefix}run:{run_id}:settled"  # counter of settled steps
KEY_RUN_DONE = "{prefix}run:{run_id}:done"  # list with one token once the run is terminal
KEY_RUN_INDEX = "{prefix}runs"  # sorted set: run_id scored by creation time
KEY_RUNS_ACTIVE = "{prefix}runs:active"  # sorted set: runs not yet terminal (recovery scans it)
KEY_RUN_CANCEL = "{prefix}run:{run_id}:cancel"  # set once a cancel was asked for
KEY_RUN_RECOVERED = "{prefix}run:{run_id}:recovered"  # hash: step_id -> when recovery re-launched it
KEY_DLQ_ENTRIES = "{prefix}dlq:entries"  # hash: entry id -> JSON dead letter
KEY_DLQ_INDEX = "{prefix}dlq:index"  # sorted set: entry id scored by time
KEY_POISON_COUNT = "{prefix}dlq:poison:{run_id}"  # counter per queue (run_id slot holds the queue)

# Lifetimes.
RUN_TTL_S = 7 * 24 * 3600  # how long a run's Redis state lives after its last write
SPEC_CACHE_SIZE = 256  # frozen specs kept per worker process (they never change)

# Delivery. The visibility timeout must exceed the longest countdown we schedule, or Redis
# redelivers the waiting message again and again (CELERY-TRAPS: kombu #337, celery #2599).
VISIBILITY_TIMEOUT_S = 3600
MAX_COUNTDOWN_S = 1800  # longer waits are taken in hops of at most this
LEASE_MARGIN_S = 30  # a step's claim outlives its hard time limit by this much
LEASE_TTL_S = 15.0  # a claimed step's lease, renewed every LEASE_RENEW_S while its process lives
LEASE_RENEW_S = 5.0  # so a dead worker's steps are free again at most LEASE_TTL_S after it died
BUSY_RECHECK_S = 2.0  # a duplicate turned away by a lease looks again after at most this

# Steps.
STEP_TIMEOUT_S = 300.0  # soft limit per attempt when neither step nor flow sets one
HARD_LIMIT_GRACE_S = 15.0  # hard limit = soft limit + this
RETRY_MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0
RETRY_MAX_BACKOFF_S = 60.0
RETRY_JITTER = True

# Recovery (a celery beat task on the plan queue, and ``manage.py recover``).
RECOVERY_INTERVAL_S = 30.0  # how often beat asks for a recovery sweep
RECOVERY_STALE_AFTER_S = 120.0  # a ready step with no claim for this long is re-launched

# Dead letters.
DLQ_TRACEBACK_CHARS = 4000
POISON_BODY_CHARS = 2000

# Client.
WAIT_POLL_S = 1.0  # longest single block while waiting for a run to finish
WAIT_REDIS_OUTAGE_S = 60.0  # wait() rides out a Redis restart this long before raising BackendError

# Observability.
METRICS_PORT = 9091  # worker main process: /metrics and /health (0: not served)
METRICS_HOST = "0.0.0.0"  # noqa: S104 - containers are scraped from outside
HEALTH_CHECK_TIMEOUT_S = 2.0  # each /health check gives up after this
ACTIVE_RUNS_SCAN = 1000  # orchestrator_active_runs looks at this many most recent runs
HEARTBEAT_LISTEN_S = 2.5  # `manage.py workers` listens this long for worker heartbeats

# Audit (taskplatform.audit).
KEY_AUDIT_SPOOL = "{prefix}audit:spool"  # list of audit events not yet in the database, in order
KEY_AUDIT_LOCK = "{prefix}audit:spool:lock"  # one drainer at a time keeps the order
KEY_AUDIT_OVERFLOW = "{prefix}audit:spool:overflow"  # hash: host's overflow folder -> heartbeat
AUDIT_BATCH_SIZE = 200  # events written per transaction
AUDIT_SPOOL_MAX_EVENTS = 200_000  # past this, a worker's audit writer moves the oldest to disk
AUDIT_SPILL_CHUNK = 5_000  # events per overflow file
AUDIT_OVERFLOW_STALE_S = 60.0  # a host's overflow not heartbeaten for this long no longer holds others
AUDIT_DRAIN_IDLE_S = 0.5  # a drainer looks at the spool at least this often
AUDIT_LOCK_TTL_S = 30  # a drainer that died mid-batch lets go after this
AUDIT_BACKOFF_MAX_S = 5.0  # longest pause between attempts while the database is down
AUDIT_MAX_JSON_BYTES = 64 * 1024  # larger input/output data is stored as a truncation marker
AUDIT_PREVIEW_CHARS = 1024  # what the marker keeps of a truncated value
AUDIT_SWEEP_INTERVAL_S = 30.0  # how often a worker's drainer sweeps abandoned attempts
AUDIT_ABANDON_MARGIN_S = 60.0  # a `started` row is abandoned this long after its hard limit
