"""Step leases, kept alive by a helper process of the process that runs the step.

A claimed step's idempotency key holds ``running:<token>`` with a short TTL. A small helper
process (``lease_helper.py``, started by the first step a process runs) renews it every
``ttl/3`` seconds for as long as that process lives; when the process dies (kill -9 of a pool
child or of the whole worker), the helper sees its pipe close and stops, and the key is gone
``ttl`` seconds later. A redelivered or recovered copy of the step can then claim it. So a dead
worker's steps are free again within ``lease_ttl_s``, whatever the step's timeout and the
visibility timeout.

Why a process and not a thread: a step that holds the GIL in C code (a long regex, a C
extension that never releases it) stops every thread of its process; a renewing thread would
let the lease lapse while the step still runs, and recovery would start a duplicate. Why a
heartbeat and not a lease as long as the step's hard time limit: that lease would keep a
crashed step blocked for its whole time limit (minutes by default).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HELPER = Path(__file__).with_name("lease_helper.py")


@dataclass(frozen=True)
class Lease:
    redis_url: str  # as redis-py reads it
    key: str  # the step's idempotency key
    token: str
    ttl_s: float


class LeaseKeeper:
    """Hands the leases of this process to its helper process; one per process (fork-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._held: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._parents_helper: subprocess.Popen[bytes] | None = None

    def hold(self, lease: Lease) -> int:
        """Keep ``lease`` renewed until :meth:`drop`; returns a handle for it."""
        with self._lock:
            self._next += 1
            msg = {"op": "hold", "id": self._next, "url": lease.redis_url, "key": lease.key,
                   "token": lease.token, "ttl_ms": int(lease.ttl_s * 1000)}
            self._held[self._next] = msg
            self._send(msg)
            return self._next

    def drop(self, handle: int) -> None:
        with self._lock:
            if self._held.pop(handle, None) is not None:
                self._send({"op": "drop", "id": handle})

    def close(self) -> None:
        """Stop the helper (its leases lapse after their TTL); at exit, and in tests."""
        with self._lock:
            proc, self._proc = self._proc, None
            self._held.clear()
        self._discard(proc)  # end of file on its stdin: it exits

    def after_fork_in_child(self) -> None:
        """A forked child holds none of its parent's leases, nor its helper's pipe (kept open
        here, it would keep the parent's helper renewing after the parent died)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._parents_helper = proc  # not ours to wait for: keep it from Popen.__del__
            if proc.stdin is not None:
                try:
                    proc.stdin.close()  # our copy of the pipe only
                except OSError:
                    pass
        self._held.clear()
        self._lock = threading.Lock()

    def _send(self, msg: dict[str, Any]) -> None:
        """Write one message to the helper (under the lock); start it, or again, if need be."""
        line = (json.dumps(msg) + "\n").encode()
        for _ in (1, 2):
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._discard(proc)
                proc = self._start()
                if proc is None:
                    return
                # A new helper gets every lease held (this one included), not the message.
                line = b"".join((json.dumps(m) + "\n").encode() for m in self._held.values())
            try:
                assert proc.stdin is not None
                proc.stdin.write(line)
                proc.stdin.flush()
                return
            except (BrokenPipeError, OSError, ValueError):
                self._discard(proc)  # it died: the next round starts another
                self._proc = None

    @staticmethod
    def _discard(proc: subprocess.Popen[bytes] | None) -> None:
        """Let go of a helper that died (its pipe closed, its exit status read)."""
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _start(self) -> subprocess.Popen[bytes] | None:
        try:
            # -P: the script's folder (taskplatform/, with its secrets.py) stays off sys.path.
            self._proc = subprocess.Popen([sys.executable, "-P", str(HELPER)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            log.error("cannot start the lease helper (%s): leases of this process will lapse "
                      "after their TTL and a step running longer may be started again", exc)
            self._proc = None
        return self._proc


keeper = LeaseKeeper()
os.register_at_fork(after_in_child=keeper.after_fork_in_child)
atexit.register(keeper.close)
