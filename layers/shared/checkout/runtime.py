"""Wiring: the objects one cold start builds, lazily, from the settings; every part can be injected."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import boto3
import httpx
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config

from checkout.alerts import AlertSink, SnsAlerts
from checkout.capture_retry import CaptureRetryWorker
from checkout.charges import Charges
from checkout.compensation import Compensator
from checkout.compensation_retries import CompensationRetrier
from checkout.config import Settings, settings
from checkout.confirm import CheckoutConfirmer
from checkout.dead_letters import DeadLetters
from checkout.failed_compensations import FailedCompensationLedger
from checkout.operator_actions import OperatorActions
from checkout.operator_reads import Kpis, ProviderStates
from checkout.orders import OrderStore
from checkout.payments import PaymentGateway, StripePaymentGateway
from checkout.recovery import CompensationWorker
from checkout.saga import Saga
from checkout.sessions import SessionOpener
from checkout.warehouse import Warehouse, WarehouseClient
from checkout.workers import PauseSwitch

# AWS calls fail fast and retry with botocore's standard mode; no call may outlive its Lambda.
AWS_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
# A confirm's lease on an order it resumes: no longer than the confirm function's Timeout (28 s); the
# function's own FUNCTION_TIMEOUT_SECONDS when set.
CONFIRM_LEASE_SECONDS = 28
# The dlq_processor's lease on a record it retries: its function's Timeout (template.yaml), below the
# queue's VisibilityTimeout, so a redelivery never finds a live lease of a crashed run.
COMPENSATION_RETRY_LEASE_SECONDS = 30
SECRET_MAX_AGE_SECONDS = 300


class Runtime:
    """Each part is built on first use, so a cold start pays only for what its requests touch.

    Parts passed in (tests, the local stack) are used instead of the defaults.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        dynamodb: Any = None,
        sqs: Any = None,
        sns: Any = None,
        cloudwatch: Any = None,
        payment_gateway: PaymentGateway | None = None,
        warehouse: Warehouse | None = None,
        alerts: AlertSink | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        injected = {
            "dynamodb": dynamodb,
            "sqs": sqs,
            "sns": sns,
            "cloudwatch": cloudwatch,
            "payment_gateway": payment_gateway,
            "warehouse": warehouse,
            "alerts": alerts,
        }
        # cached_property reads the instance dict first: an injected part is simply pre-cached.
        self.__dict__.update({name: part for name, part in injected.items() if part is not None})

    @cached_property
    def dynamodb(self) -> Any:
        return boto3.client("dynamodb", config=AWS_CONFIG)

    @cached_property
    def sqs(self) -> Any:
        return boto3.client("sqs", config=AWS_CONFIG)

    @cached_property
    def sns(self) -> Any:
        return boto3.client("sns", config=AWS_CONFIG)

    @cached_property
    def cloudwatch(self) -> Any:
        return boto3.client("cloudwatch", config=AWS_CONFIG)

    @cached_property
    def http(self) -> httpx.Client:
        # One connection pool (and one TLS context) for both providers. No transport retries: a retry is
        # the saga's decision, made after a read-back.
        return httpx.Client(transport=httpx.HTTPTransport(retries=0))

    @cached_property
    def payment_gateway(self) -> PaymentGateway:
        return_url = self.settings.payment_return_url
        return StripePaymentGateway(
            str(self.settings.payment_api_base_url),
            self._payment_api_key,
            self.http,
            return_url=str(return_url) if return_url else None,
        )

    @cached_property
    def warehouse(self) -> Warehouse:
        return WarehouseClient(str(self.settings.warehouse_api_base_url), self.http)

    @cached_property
    def alerts(self) -> AlertSink:
        return SnsAlerts(self.settings.alerts_topic_arn, self.sns)

    def _payment_api_key(self) -> str:
        if self.settings.payment_api_key:
            return self.settings.payment_api_key
        assert self.settings.payment_api_key_secret_arn is not None
        # Cached by Powertools for SECRET_MAX_AGE_SECONDS: one Secrets Manager call per cold start and rotation.
        return str(parameters.get_secret(self.settings.payment_api_key_secret_arn, max_age=SECRET_MAX_AGE_SECONDS))

    @cached_property
    def store(self) -> OrderStore:
        return OrderStore(
            self.settings.orders_table_name, self.dynamodb, due_index_shards=self.settings.due_index_shards
        )

    @cached_property
    def saga(self) -> Saga:
        return Saga(self.store, stale_saga_seconds=self.settings.stale_saga_seconds, clock=self.clock)

    @cached_property
    def charges(self) -> Charges:
        return Charges(
            self.payment_gateway,
            payment_timeout=self.settings.payment_timeout_seconds,
            search_lag_seconds=self.settings.payment_search_lag_seconds,
        )

    @cached_property
    def ledger(self) -> FailedCompensationLedger:
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
        return Compensator(
            saga=self.saga,
            charges=self.charges,
            warehouse=self.warehouse,
            ledger=self.ledger,
            warehouse_timeout=self.settings.warehouse_timeout_seconds,
        )

    @cached_property
    def confirmer(self) -> CheckoutConfirmer:
        return CheckoutConfirmer(
            store=self.store,
            saga=self.saga,
            charges=self.charges,
            compensator=lambda: self.compensator,
            clock=self.clock,
            capture_backoff_base_seconds=self.settings.capture_backoff_base_seconds,
            stale_saga_seconds=self.settings.stale_saga_seconds,
            lease_seconds=self._lease_seconds(CONFIRM_LEASE_SECONDS),
        )

    @cached_property
    def sessions(self) -> SessionOpener:
        return SessionOpener(
            store=self.store,
            warehouse=self.warehouse,
            session_ttl_seconds=self.settings.session_ttl_seconds,
            warehouse_timeout=self.settings.warehouse_timeout_seconds,
            clock=self.clock,
        )

    @cached_property
    def compensation_retries(self) -> CompensationRetrier:
        return CompensationRetrier(
            ledger=self.ledger,
            store=self.store,
            saga=self.saga,
            compensator=self.compensator,
            clock=self.clock,
            call_budget_seconds=self.settings.payment_timeout_seconds + self.settings.warehouse_timeout_seconds,
            stale_saga_seconds=self.settings.stale_saga_seconds,
            lease_seconds=self._lease_seconds(COMPENSATION_RETRY_LEASE_SECONDS),
        )

    def _lease_seconds(self, default: int) -> int:
        """A lease lasts no longer than its function's Timeout (section 4)."""
        timeout = self.settings.function_timeout_seconds
        return default if timeout is None else min(default, int(timeout))

    @cached_property
    def pause_switch(self) -> PauseSwitch:
        return PauseSwitch(self.settings.worker_pause_parameter)

    @cached_property
    def capture_retry_worker(self) -> CaptureRetryWorker:
        s = self.settings
        return CaptureRetryWorker(
            store=self.store,
            saga=self.saga,
            charges=self.charges,
            clock=self.clock,
            max_retries=s.capture_max_retries,
            backoff_base_seconds=s.capture_backoff_base_seconds,
            backoff_max_seconds=s.capture_backoff_max_seconds,
            payment_timeout=s.payment_timeout_seconds,
            circuit_failure_threshold=s.circuit_failure_threshold,
            concurrency=s.worker_concurrency,
        )

    @cached_property
    def compensation_worker(self) -> CompensationWorker:
        s = self.settings
        return CompensationWorker(
            store=self.store,
            saga=self.saga,
            charges=self.charges,
            compensator=self.compensator,
            clock=self.clock,
            stale_saga_seconds=s.stale_saga_seconds,
            payment_timeout=s.payment_timeout_seconds,
            circuit_failure_threshold=s.circuit_failure_threshold,
            concurrency=s.worker_concurrency,
            max_recovery_attempts=s.recovery_max_attempts,
        )

    @cached_property
    def operator_actions(self) -> OperatorActions:
        return OperatorActions(ledger=self.ledger, store=self.store, saga=self.saga, clock=self.clock)

    @cached_property
    def provider_states(self) -> ProviderStates:
        return ProviderStates(
            ledger=self.ledger,
            store=self.store,
            payments=self.payment_gateway,
            warehouse=self.warehouse,
            clock=self.clock,
        )

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(
            sqs=self.sqs,
            dlq_url=self.settings.failed_compensations_dlq_url,
            queue_url=self.settings.failed_compensations_queue_url,
        )

    @cached_property
    def kpis(self) -> Kpis:
        return Kpis(
            ledger=self.ledger,
            cloudwatch=self.cloudwatch,
            namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Checkout"),
            service=os.environ.get("POWERTOOLS_SERVICE_NAME", "checkout"),
            alerts_topic_name=self.settings.alerts_topic_arn.rsplit(":", 1)[-1],
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
