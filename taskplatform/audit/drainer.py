"""``python -m taskplatform.audit.drainer``: the audit writer process of one ``celery worker``.

The worker's main process starts it when the worker is ready (and stops it at shutdown; it
also dies with its parent). It drains the Redis spool into the database and sweeps abandoned
attempts, so that neither the pool processes that run steps nor the main process that feeds
them spend their time (or their GIL) on database writes. Its configuration arrives as JSON
in ``TASKPLATFORM_AUDIT_DRAINER``: ``{"url", "redis_url", "prefix", "spool_max", "overflow_dir"}``.
While the database is away it keeps the spool under ``spool_max`` events (see spool.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

ENV = "TASKPLATFORM_AUDIT_DRAINER"
STOP_FLUSH_S = 5.0


def main() -> int:
    from taskplatform import defaults  # noqa: PLC0415
    from taskplatform.audit.spool import AuditSink  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s/audit-drainer] %(message)s")
    cfg = json.loads(os.environ[ENV])
    overflow = cfg.get("overflow_dir")
    sink = AuditSink(cfg["url"], cfg["redis_url"], prefix=cfg.get("prefix", ""), sweep=True,
                     spool_max=int(cfg.get("spool_max") or defaults.AUDIT_SPOOL_MAX_EVENTS),
                     overflow_dir=Path(overflow) if overflow else None)

    def stop(_signum: int, _frame: Any) -> None:
        sink._stop.set()
        sink._wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink._loop()
    sink.close(flush_s=STOP_FLUSH_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
