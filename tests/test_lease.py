"""Step leases: renewed by a helper process while their process lives, and only then."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskplatform.config import client_url_for
from taskplatform.lease import Lease, LeaseKeeper

ROOT = Path(__file__).resolve().parent.parent
TTL_S = 1.0


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.delete(*[k for k in client.keys("test:lease:*")] or ["test:lease:none"])


@pytest.fixture
def keeper():
    k = LeaseKeeper()
    yield k
    k.close()


def _claim(r, key: str, token: str) -> None:
    r.set(key, f"running:{token}", px=int(TTL_S * 1000))


def _wait_gone(r, key: str, timeout_s: float) -> float:
    start = time.monotonic()
    while r.exists(key):
        assert time.monotonic() - start < timeout_s, f"{key} still held after {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_held_lease_outlives_its_ttl_and_a_dropped_one_lapses(r, redis_server, keeper):
    url = client_url_for(redis_server.url)
    _claim(r, "test:lease:a", "t1")
    handle = keeper.hold(Lease(url, "test:lease:a", "t1", TTL_S))
    time.sleep(3 * TTL_S)
    assert r.get("test:lease:a") == b"running:t1"
    keeper.drop(handle)
    _wait_gone(r, "test:lease:a", 3 * TTL_S)


def test_a_lease_someone_else_took_is_not_renewed(r, redis_server, keeper):
    url = client_url_for(redis_server.url)
    _claim(r, "test:lease:b", "t1")
    keeper.hold(Lease(url, "test:lease:b", "t1", TTL_S))
    r.set("test:lease:b", "running:other", px=int(TTL_S * 1000))  # lost to an expiry, retaken
    _wait_gone(r, "test:lease:b", 3 * TTL_S)
    r.set("test:lease:b", "succeeded")  # a settled step's key is never touched
    time.sleep(TTL_S)
    assert r.ttl("test:lease:b") == -1


def test_a_helper_that_died_is_replaced_and_given_every_lease_held(r, redis_server, keeper):
    url = client_url_for(redis_server.url)
    _claim(r, "test:lease:c1", "t1")
    keeper.hold(Lease(url, "test:lease:c1", "t1", TTL_S))
    first = keeper._proc
    assert first is not None
    first.kill()
    first.wait(5)
    _claim(r, "test:lease:c2", "t2")
    keeper.hold(Lease(url, "test:lease:c2", "t2", TTL_S))
    assert keeper._proc is not first and keeper._proc.poll() is None
    time.sleep(3 * TTL_S)
    assert r.exists("test:lease:c1", "test:lease:c2") == 2


def test_the_lease_lapses_once_its_process_is_killed(r, redis_server):
    """kill -9 of the step's process: its helper sees the pipe close and stops renewing."""
    code = ("import sys, time; from taskplatform.lease import Lease, keeper; "
            f"keeper.hold(Lease({client_url_for(redis_server.url)!r}, 'test:lease:d', 't1', {TTL_S})); "
            "print(keeper._proc.pid, flush=True); time.sleep(60)")
    _claim(r, "test:lease:d", "t1")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    helper_pid = int(proc.stdout.readline())
    time.sleep(3 * TTL_S)
    assert r.exists("test:lease:d")  # held while the process lives
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    proc.stdout.close()
    took = _wait_gone(r, "test:lease:d", 3 * TTL_S)
    print(f"[lease] gone {took:.2f}s after kill -9 (ttl {TTL_S:g}s)")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the helper exits too
        try:
            os.kill(helper_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the lease helper outlived its process")


def test_a_forked_child_holds_none_of_its_parents_leases(r, redis_server, keeper):
    url = client_url_for(redis_server.url)
    _claim(r, "test:lease:e", "t1")
    keeper.hold(Lease(url, "test:lease:e", "t1", TTL_S))
    os.register_at_fork(after_in_child=keeper.after_fork_in_child)
    pid = os.fork()
    if pid == 0:  # the child: nothing held, no helper, the parent's pipe closed
        ok = keeper._proc is None and not keeper._held
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    time.sleep(2 * TTL_S)
    assert r.exists("test:lease:e")  # the parent's lease is still renewed
