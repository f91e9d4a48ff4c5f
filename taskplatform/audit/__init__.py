"""The audit of record: one row per run (``flow_run_history``) and per step attempt
(``task_execution_audit``), written from Celery and engine signals through a Redis spool.

Modules: :mod:`.models` (tables), :mod:`.db` (URL, per-process engine, schema check),
:mod:`.events` (the event records and how each is applied), :mod:`.spool` (Redis spool and
the drainer that writes it to the database in order), :mod:`.handlers` (signal receivers),
:mod:`.sweeper` (attempts left ``started`` by a lost worker), :mod:`.reads` (queries),
:mod:`.archive` (a run handle served from the audit once Redis has forgotten the run).
"""

from taskplatform.audit.handlers import connect, failure_count
from taskplatform.audit.reads import list_runs, load_run, running_runs

__all__ = ["connect", "failure_count", "list_runs", "load_run", "running_runs"]
