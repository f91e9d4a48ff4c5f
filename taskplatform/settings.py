"""Typed settings, read once at the edge (app creation, CLI) and passed down."""

from __future__ import annotations

from pathlib import Path

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
    audit: bool = Field(True, validation_alias=AliasChoices("TASKPLATFORM_AUDIT", "audit"))
    secrets_file: Path | None = Field(
        None, validation_alias=AliasChoices("TASKPLATFORM_SECRETS_FILE", "secrets_file")
    )
    embedded_concurrency: int = Field(
        8, validation_alias=AliasChoices("TASKPLATFORM_EMBEDDED_CONCURRENCY", "embedded_concurrency")
    )

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: the CLI and API start an embedded one."""
        return not self.redis_url

    @property
    def max_countdown_s(self) -> int:
        """Longest countdown we publish: well inside the visibility timeout."""
        return max(1, min(defaults.MAX_COUNTDOWN_S, self.visibility_timeout_s // 2))


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
