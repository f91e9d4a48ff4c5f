"""Importing the package must not import prometheus_client (multiprocess mode is chosen then)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_does_not_import_prometheus_client():
    code = ("import sys, taskplatform; taskplatform.app.conf.broker_url; "
            "sys.exit(1 if any(m.startswith('prometheus_client') for m in sys.modules) else 0)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://127.0.0.1:1/0"}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60).returncode == 0
