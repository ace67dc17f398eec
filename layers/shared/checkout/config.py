"""Configuration: the environment the template sets, validated once per cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigurationError(RuntimeError):
    """A required variable is missing or malformed; the message names it."""


class Settings(BaseModel):
    """Every setting of ARCHITECTURE.md section 3, plus the resource names the template passes in."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    orders_table_name: str = Field(alias="ORDERS_TABLE_NAME", min_length=1)
    failed_compensations_table_name: str = Field(alias="FAILED_COMPENSATIONS_TABLE_NAME", min_length=1)
    failed_compensations_queue_url: str = Field(alias="FAILED_COMPENSATIONS_QUEUE_URL", min_length=1)
    alerts_topic_arn: str = Field(alias="ALERTS_TOPIC_ARN", min_length=1)

    payment_api_base_url: AnyHttpUrl = Field(alias="PAYMENT_API_BASE_URL", default=AnyHttpUrl("https://api.stripe.com"))
    payment_api_key: str | None = Field(alias="PAYMENT_API_KEY", default=None)
    payment_api_key_secret_arn: str | None = Field(alias="PAYMENT_API_KEY_SECRET_ARN", default=None)
    warehouse_api_base_url: AnyHttpUrl = Field(alias="WAREHOUSE_API_BASE_URL")
    warehouse_timeout_seconds: float = Field(alias="WAREHOUSE_TIMEOUT_SECONDS", default=10, gt=0, le=25)

    payment_timeout_seconds: float = Field(alias="PAYMENT_TIMEOUT_SECONDS", default=15, gt=0, le=30)
    capture_max_retries: int = Field(alias="CAPTURE_MAX_RETRIES", default=5, ge=1)
    capture_backoff_base_seconds: int = Field(alias="CAPTURE_BACKOFF_BASE_SECONDS", default=60, ge=1)
    capture_backoff_max_seconds: int = Field(alias="CAPTURE_BACKOFF_MAX_SECONDS", default=1800, ge=1)
    compensation_max_retries: int = Field(alias="COMPENSATION_MAX_RETRIES", default=3, ge=1)
    stale_saga_seconds: int = Field(alias="STALE_SAGA_SECONDS", default=120, ge=1)
    session_ttl_seconds: int = Field(alias="SESSION_TTL_SECONDS", default=1800, ge=60)
    circuit_failure_threshold: int = Field(alias="CIRCUIT_FAILURE_THRESHOLD", default=5, ge=1)
    recovery_max_attempts: int = Field(alias="RECOVERY_MAX_ATTEMPTS", default=12, ge=1)
    worker_pause_parameter: str | None = Field(alias="WORKER_PAUSE_PARAMETER", default=None)
    worker_concurrency: int = Field(alias="WORKER_CONCURRENCY", default=16, ge=1, le=64)

    @model_validator(mode="after")
    def _key_source(self) -> Settings:
        if not self.payment_api_key and not self.payment_api_key_secret_arn:
            raise ValueError("set PAYMENT_API_KEY (local, tests) or PAYMENT_API_KEY_SECRET_ARN (AWS)")
        if self.capture_backoff_max_seconds < self.capture_backoff_base_seconds:
            raise ValueError("CAPTURE_BACKOFF_MAX_SECONDS must be at least CAPTURE_BACKOFF_BASE_SECONDS")
        return self

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        try:
            return cls.model_validate(env)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'configuration'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigurationError(f"invalid configuration: {problems}") from exc


@cache
def settings() -> Settings:
    """The cold start's settings; `settings.cache_clear()` lets tests change the environment."""
    return Settings.from_environ()
