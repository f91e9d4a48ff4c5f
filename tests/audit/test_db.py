"""Database URLs, the schema check, the embedded SQLite default and the audit switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taskplatform.audit import db
from taskplatform.errors import AuditSchemaError, ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize("given,expected", [
    ("postgresql://tp:pw@db:5432/tp", "postgresql+psycopg://tp:pw@db:5432/tp"),
    ("postgres://tp@db/tp", "postgresql+psycopg://tp@db/tp"),
    ("postgresql+psycopg2://tp@db/tp", "postgresql+psycopg://tp@db/tp"),
    ("postgresql+psycopg://tp@db/tp", "postgresql+psycopg://tp@db/tp"),
    ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
])
def test_database_url_forms(given, expected):
    assert db.database_url(given) == expected


def test_unset_url_is_the_sqlite_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert db.database_url(None) == f"sqlite:///{tmp_path}/taskplatform/audit.sqlite3"


def test_bad_url_is_a_config_error_without_the_password():
    with pytest.raises(ConfigError, match="DATABASE_URL") as err:
        db.database_url("not a url:secretpw")
    assert "secretpw" not in str(err.value)


def test_old_schema_is_reported_with_the_fix(audit_db_url):
    import psycopg

    from tests.conftest import PG_ADMIN_URL

    name = f"tp_old_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = db.database_url(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        expected = r"revision none, this code needs 0001: run `python manage.py db upgrade`"
        with pytest.raises(AuditSchemaError, match=expected):
            db.check_schema(url)
        assert db.upgrade(url) == "0001"
        db.check_schema(url)
        assert db.upgrade(url) == "0001"  # idempotent
    finally:
        db.dispose_all()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_embedded_default_audits_to_sqlite_and_reads_it_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["XDG_DATA_HOME"] = str(tmp_path)
    done = _manage(["run-flow", "flows/examples/diamond.yaml", "--input", "x=3", "--json"], env)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    assert (tmp_path / "taskplatform" / "audit.sqlite3").exists()
    listed = _manage(["runs", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(x)["run_id"] for x in listed.stdout.splitlines()] == [run_id]
    status = _manage(["status", run_id, "--json"], env)
    assert status.returncode == 0, status.stderr
    obj = json.loads(status.stdout)
    assert obj["status"] == "succeeded" and obj["outputs"] == {"double": 6, "square": 9}
    assert obj["steps"]["join"] == {"status": "succeeded", "attempts": 1, "error": None}


@pytest.mark.e2e
def test_audit_switched_off_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(XDG_DATA_HOME=str(tmp_path), TASKPLATFORM_AUDIT="0")
    done = _manage(["run-flow", "hello", "--input", "who=off", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "taskplatform").exists()


def test_cli_db_upgrade_and_sweep(audit_db_url, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from taskplatform.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["db", "upgrade"], catch_exceptions=False)
    assert res.exit_code == 0 and "revision 0001" in res.stdout and "postgresql" in res.stdout
    res = runner.invoke(main, ["db", "sweep"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.startswith("swept ")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/a.sqlite3")
    res = runner.invoke(main, ["db", "upgrade"], catch_exceptions=False)
    assert res.exit_code == 0 and "revision 0001" in res.stdout
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    res = runner.invoke(main, ["db", "upgrade"], catch_exceptions=False)
    assert res.exit_code == 4 and "audit database" in res.stderr and "Traceback" not in res.output
