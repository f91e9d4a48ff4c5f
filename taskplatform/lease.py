"""Step leases kept alive by a heartbeat thread in the process that runs the step.

A claimed step's idempotency key holds ``running:<token>`` with a short TTL. While the process
lives, this thread renews it every ``ttl/3`` seconds; when the process dies (kill -9 of a
pool child or of the whole worker), renewals stop and the key is gone ``ttl`` seconds later.
A redelivered or recovered copy of the step can then claim it. So a dead worker's steps are
free again within ``lease_ttl_s``, whatever the step's timeout and the visibility timeout.

Why a heartbeat and not a lease as long as the step's hard time limit: that lease would keep a
crashed step blocked for its whole time limit (minutes by default). The cost: a process
that holds the GIL in C code for longer than the TTL (or is SIGSTOPped) loses its lease and a
duplicate may start; the hard time limit and the final-status check still keep the outcome
single (the first to settle wins).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from taskplatform.state import RunStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    store: RunStore
    run_id: str
    step_id: str
    token: str
    ttl_s: float


class LeaseKeeper:
    """Renews the leases held by this process; one per process (fork-safe)."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0
        self._next = 0

    def hold(self, lease: Lease) -> int:
        """Start renewing ``lease``; returns a handle for :meth:`drop`."""
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (or after a fork)
                self._pid = os.getpid()
                self._leases.clear()
                threading.Thread(target=self._loop, name="taskplatform-lease", daemon=True).start()
            self._next += 1
            self._leases[self._next] = lease
            return self._next

    def drop(self, handle: int) -> None:
        with self._lock:
            self._leases.pop(handle, None)

    def _loop(self) -> None:
        pid = os.getpid()
        while pid == os.getpid():
            with self._lock:
                leases = list(self._leases.items())
            period = min((le.ttl_s for _, le in leases), default=3.0) / 3
            for handle, le in leases:
                try:
                    if not le.store.renew(le.run_id, le.step_id, le.token, le.ttl_s):
                        self.drop(handle)  # settled, released, or lost to an expiry
                except Exception as exc:  # noqa: BLE001 - Redis may be restarting; try again
                    log.warning("cannot renew the lease of run %s step %s: %s", le.run_id, le.step_id, exc)
            self._wake.wait(max(0.2, period))


keeper = LeaseKeeper()
