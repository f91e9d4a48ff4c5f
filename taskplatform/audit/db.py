"""Where the audit lives: the database URL, one SQLAlchemy engine per process, the schema check.

``DATABASE_URL`` takes the conventional ``postgresql://user:pass@host:port/db`` form (run on
psycopg 3) or any SQLAlchemy URL. Unset, the audit is a SQLite file (the embedded default):
``$XDG_DATA_HOME/taskplatform/audit.sqlite3``, i.e. ``~/.local/share/taskplatform/audit.sqlite3``.
Engines are made on first use in each process (after a prefork fork), never at import.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from taskplatform.errors import AuditSchemaError, BackendError, ConfigError

log = logging.getLogger(__name__)

PG_CONNECT_TIMEOUT_S = 3
SQLITE_BUSY_TIMEOUT_S = 30
PG_STATEMENT_TIMEOUT_MS = 20_000  # below defaults.AUDIT_LOCK_TTL_S


def data_dir() -> Path:
    """``$XDG_DATA_HOME/taskplatform`` (``~/.local/share/taskplatform``): the audit's local files."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskplatform"


def default_sqlite_path() -> Path:
    """The embedded default's audit file (its folder is made on first use)."""
    return data_dir() / "audit.sqlite3"


def database_url(raw: str | None) -> str:
    """The SQLAlchemy URL for ``DATABASE_URL`` (``raw``); the SQLite default when unset.

    Raises ConfigError for a URL SQLAlchemy cannot read.
    """
    if not raw:
        return f"sqlite:///{default_sqlite_path()}"
    for plain in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if raw.startswith(plain):
            raw = "postgresql+psycopg://" + raw[len(plain):]
            break
    try:
        make_url(raw)
    except ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a database URL: {safe_url(raw)}") from exc
    return raw


def safe_url(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unreadable URL>"


_engines: dict[tuple[int, str], Engine] = {}
_checked: set[tuple[int, str]] = set()
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """This process's engine for ``url`` (made on first use; a forked child makes its own)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _make_engine(url)
                _engines[key] = engine
    return engine


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # A statement never outlives the spool's lock (a stuck drainer would hold up the audit).
    kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S,
                              "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"}
    kwargs.update(pool_size=2, max_overflow=4, pool_recycle=1800)
    return create_engine(url, **kwargs)


def dispose_all() -> None:
    """Close every engine of this process (tests, shutdown)."""
    with _lock:
        for (pid, url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
            del _engines[(pid, url)]
        _checked.clear()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# --- migrations -------------------------------------------------------------------------------


def _alembic_config(url: str) -> Any:
    from alembic.config import Config  # noqa: PLC0415 - alembic is only needed here

    from taskplatform import migrations  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    return str(ScriptDirectory.from_config(_alembic_config(url)).get_current_head())


def current_revision(url: str) -> str | None:
    """The schema revision the database is at (None: no audit schema at all)."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> str:
    """Create or update the audit schema; returns the revision it is at now.

    Raises BackendError when the database cannot be reached.
    """
    from alembic import command  # noqa: PLC0415

    cfg = _alembic_config(url)
    try:
        with get_engine(url).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise BackendError(f"audit database {safe_url(url)}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0]}") from exc
    _checked.add((os.getpid(), url))
    return current_revision(url) or ""


def check_schema(url: str) -> None:
    """Once per process: the database's schema is the one this code writes, or say so.

    The embedded SQLite default is created or upgraded in place. Raises AuditSchemaError
    naming both revisions and the command that fixes it; BackendError if unreachable.
    """
    key = (os.getpid(), url)
    if key in _checked:
        return
    if is_sqlite(url):
        upgrade(url)
        return
    try:
        current = current_revision(url)
    except SQLAlchemyError as exc:
        raise BackendError(f"audit database {safe_url(url)} unreachable: "
                           f"{str(exc).splitlines()[0]}") from exc
    head = head_revision(url)
    if current != head:
        raise AuditSchemaError(
            f"audit database {safe_url(url)} has schema revision {current or 'none'}, this code "
            f"needs {head}: run `python manage.py db upgrade`"
        )
    _checked.add(key)


def startup_check(settings: Any) -> None:
    """At API or CLI start: AuditSchemaError for an outdated schema; a warning if unreachable."""
    if not settings.audit:
        return
    try:
        check_schema(database_url(settings.database_url))
    except BackendError as exc:
        log.warning("audit database not reachable (%s); events are spooled until it is", exc)
