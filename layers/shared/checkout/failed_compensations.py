"""The failed-compensation ledger: a record (the truth), a queue message (transport), one alert."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from checkout.alerts import Alert, AlertKind, AlertSink
from checkout.dynamodb import from_item, is_condition_failure, serialize, to_item
from checkout.observability import MetricUnit, logger, metrics
from checkout.saga import iso

STATUS_INDEX = "status-index"
ORDER_INDEX = "order-index"


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
    # Who closed the record: the dlq_processor, or the operator (IAM ARN) who resolved it by hand.
    resolved_by: str | None = None
    last_attempt_at: str | None = None
    # Payment key attempts learnt by retries: an order in COMPENSATION_FAILED cannot be written until it is
    # COMPENSATED, so the record carries them, or a retry would replay a stored 5xx under an old key forever.
    key_attempts: dict[str, int] = {}
    # The steps a retry still has to do, once a retry got part of the way (empty: what operation_type names).
    open_steps: list[OperationType] = []
    actions: list[dict[str, str]] = []
    # A processor's lease on the record while it retries: two deliveries never work one record at once.
    lease_owner: str | None = None
    lease_until: int | None = None

    @property
    def is_open(self) -> bool:
        return self.status is not RecordStatus.RESOLVED

    def steps_to_retry(self) -> frozenset[OperationType]:
        return frozenset(self.open_steps or [self.operation_type])

    def public_view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"lease_owner", "lease_until"})

    def index_key(self) -> dict[str, str]:
        """The record's position in the status-index: where a page that ends on it continues."""
        return {"id": self.id, "status": self.status.value, "created_at": self.created_at}


def action_entry(action: Literal["retry", "resolve"], *, by: str, at: str, note: str | None = None) -> dict[str, str]:
    """One entry of a record's audit trail of operator actions."""
    entry = {"action": action, "by": by, "at": at}
    if note:
        entry["note"] = note
    return entry


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
            stored, created = self._create_or_get(record)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("could not write the failed-compensation record", extra={"order_id": order_id})
            self._alert(record, dlq_recorded=False, error=f"{error}; record not written: {exc}")
            return None
        if created:
            metrics.add_metric(name="CompensationFailed", unit=MetricUnit.Count, value=1)
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

    # listing ----------------------------------------------------------------------------------
    def list_by_status(
        self, status: RecordStatus, *, limit: int, after: dict[str, str] | None = None
    ) -> tuple[list[FailedCompensation], bool]:
        """Up to `limit` records in `status`, oldest first, after the index key `after`; and whether more follow.

        A Query on the status-index, never a Scan. One record more than asked is read so that "more follow"
        is exact and a client is never handed a cursor to an empty page.
        """
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}},
            "ScanIndexForward": True,
        }
        if after is not None:
            kwargs["ExclusiveStartKey"] = {name: {"S": value} for name, value in after.items()}
        found: list[FailedCompensation] = []
        while True:
            kwargs["Limit"] = limit + 1 - len(found)
            page = self._dynamodb.query(**kwargs)
            found += [FailedCompensation.model_validate(from_item(item)) for item in page.get("Items", [])]
            if len(found) > limit:
                return found[:limit], True
            if "LastEvaluatedKey" not in page:
                return found, False
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def for_order(self, order_id: str) -> list[FailedCompensation]:
        """Every record of one order, by a Query on the order-index."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": ORDER_INDEX,
            "KeyConditionExpression": "order_id = :order",
            "ExpressionAttributeValues": {":order": {"S": order_id}},
        }
        found: list[FailedCompensation] = []
        while True:
            page = self._dynamodb.query(**kwargs)
            found += [FailedCompensation.model_validate(from_item(item)) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return sorted(found, key=lambda record: record.created_at)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def count_by_status(self, status: RecordStatus) -> int:
        """How many records are in `status`: a COUNT Query on the status-index (items are read, not returned)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}},
            "Select": "COUNT",
        }
        total = 0
        while True:
            page = self._dynamodb.query(**kwargs)
            total += int(page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                return total
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def created_between(self, status: RecordStatus, start: str, end: str) -> list[FailedCompensation]:
        """Every record in `status` created in [start, end) (ISO 8601 UTC): one Query on the status-index."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :status AND created_at BETWEEN :start AND :end",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}, ":start": {"S": start}, ":end": {"S": end}},
        }
        found: list[FailedCompensation] = []
        while True:
            page = self._dynamodb.query(**kwargs)
            found += [FailedCompensation.model_validate(from_item(item)) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return [record for record in found if record.created_at < end]
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # status changes: each one conditional, so a resolved record never reopens ----------------
    def claim(self, record: FailedCompensation, *, owner: str, lease_seconds: int) -> FailedCompensation | None:
        """Lease an open record for one retry; None when it is resolved or another processor holds it."""
        now = int(self._clock())
        return self._update(
            record.id,
            "SET lease_owner = :owner, lease_until = :until",
            "attribute_exists(id) AND #status <> :resolved "
            "AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            {
                ":owner": {"S": owner},
                ":until": {"N": str(now + lease_seconds)},
                ":now": {"N": str(now)},
            },
        )

    def record_attempt_failure(
        self,
        record: FailedCompensation,
        *,
        error: str,
        key_attempts: dict[str, int],
        open_steps: list[OperationType],
        last_delivery: bool = False,
    ) -> FailedCompensation | None:
        """Count one failed retry: `retrying`, or `failed` once retry_count reaches max_retries.

        `last_delivery` (the message was received maxReceiveCount times, so SQS moves it to the DLQ next) also
        makes it `failed`: a delivery lost to a crash counts for SQS but not here, and the record must not
        stay `retrying` with its message parked. Conditional on the retry_count read, so two writers never
        count one attempt twice; None when the record was resolved or counted meanwhile (the caller re-reads).
        """
        count = record.retry_count + 1
        # A record once `failed` stays `failed` while redriven tries fail: its one alert has gone out.
        used_up = count >= record.max_retries or last_delivery or record.status is RecordStatus.FAILED
        status = RecordStatus.FAILED if used_up else RecordStatus.RETRYING
        now = iso(self._clock())
        return self._update(
            record.id,
            "SET retry_count = :count, #status = :status, error_message = :error, key_attempts = :keys, "
            "open_steps = :steps, updated_at = :now, last_attempt_at = :now REMOVE lease_owner, lease_until",
            "attribute_exists(id) AND #status <> :resolved AND retry_count = :expected",
            {
                ":count": {"N": str(count)},
                ":expected": {"N": str(record.retry_count)},
                ":status": {"S": status.value},
                ":error": {"S": error[:2000] or "unknown error"},
                ":keys": serialize(key_attempts),
                ":steps": serialize([step.value for step in open_steps]),
                ":now": {"S": now},
            },
        )

    def resolve(
        self,
        record_id: str,
        *,
        by: str,
        action: dict[str, str] | None = None,
        key_attempts: dict[str, int] | None = None,
    ) -> FailedCompensation | None:
        """Close an open record (resolved_at, resolved_by); None when it was already resolved."""
        now = iso(self._clock())
        sets = ["#status = :resolved", "resolved_at = :now", "updated_at = :now", "resolved_by = :by"]
        values: dict[str, Any] = {":now": {"S": now}, ":by": {"S": by}}
        if action is not None:
            sets.append("actions = list_append(if_not_exists(actions, :none), :action)")
            values[":none"] = {"L": []}
            values[":action"] = serialize([action])
        if key_attempts is not None:
            sets.append("key_attempts = :keys")
            values[":keys"] = serialize(key_attempts)
        return self._update(
            record_id,
            f"SET {', '.join(sets)} REMOVE lease_owner, lease_until",
            "attribute_exists(id) AND #status <> :resolved",
            values,
        )

    def requeue(self, record_id: str, *, action: dict[str, str]) -> FailedCompensation | None:
        """An operator's retry: queue a fresh message, then mark the record `pending`; None if it is resolved.

        The message goes first: if SQS refuses, the record is unchanged and the caller can say so. A message
        for a record resolved meanwhile is harmless (the processor skips resolved records).
        """
        self.send_message(record_id)
        return self._update(
            record_id,
            "SET #status = :pending, updated_at = :now, actions = list_append(if_not_exists(actions, :none), :action)",
            "attribute_exists(id) AND #status <> :resolved",
            {
                ":pending": {"S": RecordStatus.PENDING.value},
                ":now": {"S": iso(self._clock())},
                ":none": {"L": []},
                ":action": serialize([action]),
            },
        )

    def alert_exhausted(self, record: FailedCompensation) -> bool:
        """The one `compensation_exhausted` alert of a record; False when already sent (or SNS refused)."""
        if record.exhausted_alert_sent or not self._mark(record.id, "exhausted_alert_sent"):
            return False
        error = f"retries exhausted after {record.retry_count} of {record.max_retries}: {record.error_message}"
        if self._alert(record, dlq_recorded=True, error=error, kind=AlertKind.COMPENSATION_EXHAUSTED):
            return True
        # Not sent: clear the flag so the next failed delivery of this record tries the alert again.
        self._unmark(record.id, "exhausted_alert_sent")
        return False

    def _update(self, record_id: str, update: str, condition: str, values: dict[str, Any]) -> FailedCompensation | None:
        names = {"#status": "status"} if "#status" in update or "#status" in condition else {}
        if ":resolved" in condition or ":resolved" in update:
            values = {**values, ":resolved": {"S": RecordStatus.RESOLVED.value}}
        try:
            answer = self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": record_id}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                **({"ExpressionAttributeNames": names} if names else {}),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return None
            raise
        return FailedCompensation.model_validate(from_item(answer["Attributes"]))

    def _create_or_get(self, record: FailedCompensation) -> tuple[FailedCompensation, bool]:
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=to_item(record),
                ConditionExpression="attribute_not_exists(id)",
            )
            return record, True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
        existing = self.get(record.id)
        if existing is None:  # pragma: no cover - written and gone: records are never deleted
            raise RuntimeError(f"failed-compensation record {record.id} vanished")
        return existing, False

    def send_message(self, record_id: str, *, delay_seconds: int = 0) -> None:
        """Queue `{"compensation_id": id}` for the dlq_processor; raises when SQS refuses."""
        self._sqs.send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps({"compensation_id": record_id}),
            DelaySeconds=delay_seconds,
        )

    def _enqueue(self, record: FailedCompensation) -> None:
        try:
            self.send_message(record.id)
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
                # A record written before the flag existed has no attribute, and `<>` on a missing one is false.
                ConditionExpression="attribute_exists(id) AND (attribute_not_exists(#flag) OR #flag <> :true)",
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
