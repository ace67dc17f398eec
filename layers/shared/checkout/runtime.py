"""Wiring: the objects one cold start builds, lazily, from the settings; every part can be injected."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config

from checkout.alerts import AlertSink, SnsAlerts
from checkout.charges import Charges
from checkout.compensation import Compensator
from checkout.config import Settings, settings
from checkout.confirm import CheckoutConfirmer
from checkout.failed_compensations import FailedCompensationLedger
from checkout.orders import OrderStore
from checkout.payments import PaymentGateway, StripePaymentGateway
from checkout.saga import Saga
from checkout.sessions import WAREHOUSE_TIMEOUT_SECONDS, SessionOpener
from checkout.warehouse import Warehouse, WarehouseClient

# AWS calls fail fast and retry with botocore's standard mode; no call may outlive its Lambda.
AWS_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
# A confirm's lease on an order it resumes: no longer than the confirm function's Timeout.
CONFIRM_LEASE_SECONDS = 30
SECRET_MAX_AGE_SECONDS = 300


@dataclass
class Runtime:
    settings: Settings
    clock: Callable[[], float] = time.time
    dynamodb: Any = None
    sqs: Any = None
    sns: Any = None
    payment_gateway: PaymentGateway | None = None
    warehouse: Warehouse | None = None
    alerts: AlertSink | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dynamodb = self.dynamodb or boto3.client("dynamodb", config=AWS_CONFIG)
        self.sqs = self.sqs or boto3.client("sqs", config=AWS_CONFIG)
        self.sns = self.sns or boto3.client("sns", config=AWS_CONFIG)
        self.payment_gateway = self.payment_gateway or StripePaymentGateway(
            str(self.settings.payment_api_base_url), self._payment_api_key
        )
        self.warehouse = self.warehouse or WarehouseClient(str(self.settings.warehouse_api_base_url))
        self.alerts = self.alerts or SnsAlerts(self.settings.alerts_topic_arn, self.sns)

    def _payment_api_key(self) -> str:
        if self.settings.payment_api_key:
            return self.settings.payment_api_key
        assert self.settings.payment_api_key_secret_arn is not None
        # Cached by Powertools for SECRET_MAX_AGE_SECONDS: one Secrets Manager call per cold start and rotation.
        return str(parameters.get_secret(self.settings.payment_api_key_secret_arn, max_age=SECRET_MAX_AGE_SECONDS))

    @cached_property
    def store(self) -> OrderStore:
        return OrderStore(self.settings.orders_table_name, self.dynamodb)

    @cached_property
    def saga(self) -> Saga:
        return Saga(self.store, stale_saga_seconds=self.settings.stale_saga_seconds, clock=self.clock)

    @cached_property
    def charges(self) -> Charges:
        assert self.payment_gateway is not None
        return Charges(self.payment_gateway, payment_timeout=self.settings.payment_timeout_seconds)

    @cached_property
    def ledger(self) -> FailedCompensationLedger:
        assert self.alerts is not None
        return FailedCompensationLedger(
            table_name=self.settings.failed_compensations_table_name,
            queue_url=self.settings.failed_compensations_queue_url,
            dynamodb=self.dynamodb,
            sqs=self.sqs,
            alerts=self.alerts,
            max_retries=self.settings.compensation_max_retries,
            clock=self.clock,
        )

    @cached_property
    def compensator(self) -> Compensator:
        assert self.warehouse is not None
        return Compensator(
            saga=self.saga,
            charges=self.charges,
            warehouse=self.warehouse,
            ledger=self.ledger,
            warehouse_timeout=WAREHOUSE_TIMEOUT_SECONDS,
        )

    @cached_property
    def confirmer(self) -> CheckoutConfirmer:
        return CheckoutConfirmer(
            store=self.store,
            saga=self.saga,
            charges=self.charges,
            compensator=self.compensator,
            clock=self.clock,
            capture_backoff_base_seconds=self.settings.capture_backoff_base_seconds,
            stale_saga_seconds=self.settings.stale_saga_seconds,
            lease_seconds=CONFIRM_LEASE_SECONDS,
        )

    @cached_property
    def sessions(self) -> SessionOpener:
        assert self.warehouse is not None
        return SessionOpener(
            store=self.store,
            warehouse=self.warehouse,
            session_ttl_seconds=self.settings.session_ttl_seconds,
            clock=self.clock,
        )


_current: Runtime | None = None


def runtime() -> Runtime:
    """This cold start's runtime, built on first use (no import-time clients)."""
    global _current
    if _current is None:
        _current = Runtime(settings())
    return _current


def use_runtime(value: Runtime | None) -> None:
    """Install a runtime (tests, the local stack), or None to rebuild from the environment on next use."""
    global _current
    _current = value
    settings.cache_clear()
