"""Configuration: the environment the template sets, validated once per cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from checkout.deadline import DEFAULT_MARGIN_SECONDS


class ConfigurationError(RuntimeError):
    """A required variable is missing or malformed; the message names it."""


class Settings(BaseModel):
    """Every setting of ARCHITECTURE.md section 3, plus the resource names the template passes in."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    orders_table_name: str = Field(alias="ORDERS_TABLE_NAME", min_length=1)
    failed_compensations_table_name: str = Field(alias="FAILED_COMPENSATIONS_TABLE_NAME", min_length=1)
    failed_compensations_queue_url: str = Field(alias="FAILED_COMPENSATIONS_QUEUE_URL", min_length=1)
    alerts_topic_arn: str = Field(alias="ALERTS_TOPIC_ARN", min_length=1)
    # Only the admin function reads it (the operator console's DLQ depth and redrive).
    failed_compensations_dlq_url: str | None = Field(alias="FAILED_COMPENSATIONS_DLQ_URL", default=None)

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
    payment_search_lag_seconds: int = Field(alias="PAYMENT_SEARCH_LAG_SECONDS", default=3600, ge=0)
    # Empty (the template's default) means no redirect-based payment methods: authorize sends allow_redirects=never.
    payment_return_url: AnyHttpUrl | None = Field(alias="PAYMENT_RETURN_URL", default=None)
    recovery_max_attempts: int = Field(alias="RECOVERY_MAX_ATTEMPTS", default=12, ge=1)
    worker_pause_parameter: str | None = Field(alias="WORKER_PAUSE_PARAMETER", default=None)
    worker_concurrency: int = Field(alias="WORKER_CONCURRENCY", default=16, ge=1, le=64)
    # The running function's own Timeout, and the confirm function's (template.yaml sets both): the timing
    # relations of ARCHITECTURE.md section 4 are checked against them at cold start. Unset outside Lambda.
    function_timeout_seconds: float | None = Field(alias="FUNCTION_TIMEOUT_SECONDS", default=None, gt=0, le=900)
    confirm_timeout_seconds: float | None = Field(alias="CONFIRM_TIMEOUT_SECONDS", default=None, gt=0, le=900)
    # Partitions of each work queue in the due-index (docs/capacity.md); may only grow, see the runbook.
    due_index_shards: int = Field(alias="DUE_INDEX_SHARDS", default=16, ge=1, le=64)

    @field_validator("payment_return_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _key_source(self) -> Settings:
        if not self.payment_api_key and not self.payment_api_key_secret_arn:
            raise ValueError("set PAYMENT_API_KEY (local, tests) or PAYMENT_API_KEY_SECRET_ARN (AWS)")
        if self.capture_backoff_max_seconds < self.capture_backoff_base_seconds:
            raise ValueError("CAPTURE_BACKOFF_MAX_SECONDS must be at least CAPTURE_BACKOFF_BASE_SECONDS")
        problems = timing_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
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


# What stays reserved after a call's timeout, and what a worker keeps beyond one payment call to write an outcome.
CALL_MARGIN_SECONDS = DEFAULT_MARGIN_SECONDS
WRITE_MARGIN_SECONDS = 3.0
# What an invocation has used before its first provider call (reading the event, the order, the record).
STARTUP_SECONDS = 1.0


def timing_problems(s: Settings) -> list[str]:
    """Every timing relation section 4 depends on that these settings break, each naming both values.

    A function that cannot fit one payment call and one warehouse call (plus margins) in its Timeout never takes
    work: the dlq_processor would defer every message for ever, the workers would stop at once.
    """
    problems = []
    timeout = s.function_timeout_seconds
    if timeout is not None:
        margin = CALL_MARGIN_SECONDS + STARTUP_SECONDS
        need = s.payment_timeout_seconds + s.warehouse_timeout_seconds + margin
        if need > timeout:
            problems.append(
                f"PAYMENT_TIMEOUT_SECONDS ({s.payment_timeout_seconds:g}) + WAREHOUSE_TIMEOUT_SECONDS "
                f"({s.warehouse_timeout_seconds:g}) + {margin:g} s margin = {need:g} s must fit in "
                f"FUNCTION_TIMEOUT_SECONDS ({timeout:g})"
            )
        need = s.payment_timeout_seconds + WRITE_MARGIN_SECONDS + margin
        if need > timeout:
            problems.append(
                f"PAYMENT_TIMEOUT_SECONDS ({s.payment_timeout_seconds:g}) + "
                f"{WRITE_MARGIN_SECONDS + margin:g} s to write the outcome = {need:g} s must fit in "
                f"FUNCTION_TIMEOUT_SECONDS ({timeout:g})"
            )
    if s.confirm_timeout_seconds is not None and s.stale_saga_seconds <= s.confirm_timeout_seconds:
        problems.append(
            f"STALE_SAGA_SECONDS ({s.stale_saga_seconds}) must be above CONFIRM_TIMEOUT_SECONDS "
            f"({s.confirm_timeout_seconds:g}), or recovery takes over a confirm that is still running"
        )
    return problems


@cache
def settings() -> Settings:
    """The cold start's settings; `settings.cache_clear()` lets tests change the environment."""
    return Settings.from_environ()
