"""The failed-compensation ledger: a record (the truth), a queue message (transport), one alert."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from checkout.alerts import Alert, AlertKind, AlertSink
from checkout.dynamodb import from_item, to_item
from checkout.observability import logger
from checkout.saga import iso


class OperationType(StrEnum):
    VOID_AUTHORIZATION = "void_authorization"
    RELEASE_RESERVATION = "release_reservation"
    REFUND = "refund"
    ORDER_COMPENSATION = "order_compensation"


class RecordStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    FAILED = "failed"
    RESOLVED = "resolved"


class FailedCompensation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    order_id: str
    customer_id: str | None = None
    operation_type: OperationType
    authorization_id: str | None = None
    error_message: str
    retry_count: int = 0
    max_retries: int
    status: RecordStatus = RecordStatus.PENDING
    alert_sent: bool = False
    exhausted_alert_sent: bool = False
    created_at: str
    updated_at: str
    resolved_at: str | None = None
    actions: list[dict[str, str]] = []

    def public_view(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def compensation_id(order_id: str, operation: OperationType) -> str:
    """One record per order and failed step, so recording the same failure twice finds the first."""
    return f"fc_{order_id}_{operation.value}"


class FailedCompensationLedger:
    def __init__(
        self,
        *,
        table_name: str,
        queue_url: str,
        dynamodb: Any,
        sqs: Any,
        alerts: AlertSink,
        max_retries: int,
        clock: Callable[[], float],
    ) -> None:
        self._table = table_name
        self._queue_url = queue_url
        self._dynamodb = dynamodb
        self._sqs = sqs
        self._alerts = alerts
        self._max_retries = max_retries
        self._clock = clock

    def record_failure(
        self,
        *,
        order_id: str,
        customer_id: str | None,
        operation: OperationType,
        authorization_id: str | None,
        error: str,
    ) -> FailedCompensation | None:
        """Record, queue and alert a failed compensation step; never raises.

        Returns the record, or None when it could not be written (the alert then says dlq_recorded=false).
        """
        now = iso(self._clock())
        record = FailedCompensation(
            id=compensation_id(order_id, operation),
            order_id=order_id,
            customer_id=customer_id,
            operation_type=operation,
            authorization_id=authorization_id,
            error_message=error[:2000],
            max_retries=self._max_retries,
            created_at=now,
            updated_at=now,
        )
        stored: FailedCompensation | None
        try:
            stored = self._create_or_get(record)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("could not write the failed-compensation record", extra={"order_id": order_id})
            self._alert(record, dlq_recorded=False, error=f"{error}; record not written: {exc}")
            return None
        if stored.status is RecordStatus.RESOLVED:
            return stored
        self._enqueue(stored)
        if not stored.alert_sent and self._mark(stored.id, "alert_sent"):
            if self._alert(stored, dlq_recorded=True, error=error):
                return stored.model_copy(update={"alert_sent": True})
            self._unmark(stored.id, "alert_sent")
        return stored

    def get(self, record_id: str) -> FailedCompensation | None:
        item = self._dynamodb.get_item(TableName=self._table, Key={"id": {"S": record_id}}, ConsistentRead=True).get(
            "Item"
        )
        return FailedCompensation.model_validate(from_item(item)) if item else None

    def _create_or_get(self, record: FailedCompensation) -> FailedCompensation:
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=to_item(record),
                ConditionExpression="attribute_not_exists(id)",
            )
            return record
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
        existing = self.get(record.id)
        if existing is None:  # pragma: no cover - written and gone: records are never deleted
            raise RuntimeError(f"failed-compensation record {record.id} vanished")
        return existing

    def _enqueue(self, record: FailedCompensation) -> None:
        try:
            self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps({"compensation_id": record.id}))
        except (ClientError, BotoCoreError):
            # The record is the truth; an operator's retry re-queues it, and the alert names it.
            logger.exception("could not queue the failed compensation", extra={"compensation_id": record.id})

    def _mark(self, record_id: str, flag: str) -> bool:
        """Set a boolean flag only if it was unset: the at-most-once guard for each alert kind."""
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": record_id}},
                UpdateExpression="SET #flag = :true",
                ConditionExpression="attribute_exists(id) AND #flag <> :true",
                ExpressionAttributeNames={"#flag": flag},
                ExpressionAttributeValues={":true": {"BOOL": True}},
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            logger.exception("could not mark the alert as sent", extra={"compensation_id": record_id})
            return False

    def _unmark(self, record_id: str, flag: str) -> None:
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": record_id}},
                UpdateExpression="SET #flag = :false",
                ExpressionAttributeNames={"#flag": flag},
                ExpressionAttributeValues={":false": {"BOOL": False}},
            )
        except (ClientError, BotoCoreError):
            logger.exception("could not reset the alert flag", extra={"compensation_id": record_id})

    def _alert(
        self, record: FailedCompensation, *, dlq_recorded: bool, error: str, kind: AlertKind | None = None
    ) -> bool:
        alert = Alert(
            kind=kind or AlertKind.COMPENSATION_FAILED,
            severity="critical",
            order_id=record.order_id,
            customer_id=record.customer_id,
            compensation_id=record.id if dlq_recorded else None,
            operation_type=record.operation_type.value,
            error=error,
            dlq_recorded=dlq_recorded,
            at=iso(self._clock()),
        )
        try:
            self._alerts.send(alert)
            return True
        except (ClientError, BotoCoreError):
            logger.exception("could not send the alert", extra={"compensation_id": record.id})
            return False
