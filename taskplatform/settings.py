"""Typed settings, read once at the edge (app creation, CLI) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskplatform import defaults


class Settings(BaseSettings):
    """Everything the platform reads from the environment, with its unit."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    key_prefix: str = Field("", validation_alias=AliasChoices("TASKPLATFORM_KEY_PREFIX", "key_prefix"))
    flows_dir: Path = Field(
        Path("flows"), validation_alias=AliasChoices("TASKPLATFORM_FLOWS_DIR", "flows_dir")
    )
    run_ttl_s: int = Field(
        defaults.RUN_TTL_S, validation_alias=AliasChoices("TASKPLATFORM_RUN_TTL_S", "run_ttl_s")
    )
    visibility_timeout_s: int = Field(
        defaults.VISIBILITY_TIMEOUT_S,
        validation_alias=AliasChoices("TASKPLATFORM_VISIBILITY_TIMEOUT_S", "visibility_timeout_s"),
    )
    lease_ttl_s: float = Field(
        defaults.LEASE_TTL_S, gt=0.5,
        validation_alias=AliasChoices("TASKPLATFORM_LEASE_TTL_S", "lease_ttl_s"),
    )
    recovery_interval_s: float = Field(
        defaults.RECOVERY_INTERVAL_S, gt=0,
        validation_alias=AliasChoices("TASKPLATFORM_RECOVERY_INTERVAL_S", "recovery_interval_s"),
    )
    recovery_stale_after_s: float = Field(
        defaults.RECOVERY_STALE_AFTER_S, ge=0,
        validation_alias=AliasChoices("TASKPLATFORM_RECOVERY_STALE_AFTER_S", "recovery_stale_after_s"),
    )
    audit: bool = Field(True, validation_alias=AliasChoices("TASKPLATFORM_AUDIT", "audit"))
    # While the database is away, a worker's audit writer keeps the Redis spool under this many
    # events by moving the oldest to files in audit_overflow_dir (written back first on return).
    audit_spool_max_events: int = Field(
        defaults.AUDIT_SPOOL_MAX_EVENTS, ge=10,
        validation_alias=AliasChoices("TASKPLATFORM_AUDIT_SPOOL_MAX_EVENTS", "audit_spool_max_events"),
    )
    audit_overflow_dir: Path | None = Field(
        None, validation_alias=AliasChoices("TASKPLATFORM_AUDIT_OVERFLOW_DIR", "audit_overflow_dir")
    )
    # Names this platform's Redis in the audit: recovery rebuilds only its own lost runs when
    # several deployments (or test stacks) share one audit database.
    deployment: str = Field(
        "default", min_length=1, validation_alias=AliasChoices("TASKPLATFORM_DEPLOYMENT", "deployment")
    )
    secrets_file: Path | None = Field(
        None, validation_alias=AliasChoices("TASKPLATFORM_SECRETS_FILE", "secrets_file")
    )
    embedded_concurrency: int = Field(
        8, validation_alias=AliasChoices("TASKPLATFORM_EMBEDDED_CONCURRENCY", "embedded_concurrency")
    )
    # Observability (worker main process): /metrics and /health, log format.
    metrics_port: int = Field(
        defaults.METRICS_PORT, ge=0, le=65535,
        validation_alias=AliasChoices("EXECUTOR_METRICS_PORT", "metrics_port"),
    )
    metrics_host: str = Field(
        defaults.METRICS_HOST, validation_alias=AliasChoices("EXECUTOR_METRICS_HOST", "metrics_host")
    )
    metrics_dir: Path | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "metrics_dir")
    )
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=AliasChoices("TASKPLATFORM_LOG_FORMAT", "log_format")
    )

    @property
    def overflow_dir(self) -> Path:
        """Where a worker's audit writer keeps what the spool cannot hold (see audit/spool.py)."""
        if self.audit_overflow_dir is not None:
            return self.audit_overflow_dir
        from taskplatform.audit.db import data_dir  # noqa: PLC0415

        return data_dir() / "audit-overflow"

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: the CLI and API start an embedded one."""
        return not self.redis_url

    @property
    def lost_run_grace_s(self) -> float:
        """How long wait() waits for the recovery sweep to rebuild a run Redis lost."""
        return max(10.0, 3 * self.recovery_interval_s + self.recovery_stale_after_s)

    @property
    def max_countdown_s(self) -> int:
        """Longest countdown we publish: well inside the visibility timeout."""
        return max(1, min(defaults.MAX_COUNTDOWN_S, self.visibility_timeout_s // 2))


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
