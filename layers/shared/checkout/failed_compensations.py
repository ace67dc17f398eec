"""The failed-compensation ledger: a record (the truth), a queue message (transport), one alert."""

from __future__ import annotations

import json
import uuid
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
# How long an actor that is publishing a record's alert holds it: longer than one SNS Publish with botocore's
# retries (3 x 5 s read timeout), so two live actors never both publish; a crashed one's claim simply runs out.
ALERT_CLAIM_SECONDS = 60
# Tries of the write that marks an alert sent once SNS took it: each failure here costs a duplicate alert later.
MARK_SENT_TRIES = 3


class RecordIncomplete(Exception):
    """The record, its queue message or its alert could not be made (our own AWS plumbing failed).

    The order must stay COMPENSATING and due: the next actor that touches it completes the record.
    `record_id` names the record when it was written.
    """

    def __init__(self, message: str, *, record_id: str | None = None) -> None:
        super().__init__(message)
        self.record_id = record_id


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


# The ledger's own bookkeeping (leases, alert claims and texts, write tokens): never shown by the admin API,
# and left out of its OpenAPI schema by the same list (api_models.CompensationRecordOut).
INTERNAL_FIELDS = frozenset(
    {
        "lease_owner",
        "lease_until",
        "alert_claimed_until",
        "exhausted_alert_claimed_until",
        "last_write",
        "alert_error",
        "exhausted_error",
    }
)


class FailedCompensation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    order_id: str
    customer_id: str | None = None
    operation_type: OperationType
    authorization_id: str | None = None
    error_message: str
    # What the alerts say, fixed when each is first due: the record's first error, and the exhausted message
    # written with the move to `failed`. error_message moves on with every retry; a re-sent alert must not.
    alert_error: str | None = None
    exhausted_error: str | None = None
    retry_count: int = 0
    max_retries: int
    status: RecordStatus = RecordStatus.PENDING
    # A resolved record is never reused: a later failure of the same step makes generation n + 1 (a new id).
    generation: int = 1
    # The three parts of a complete record: the item itself, its queue message, its one alert (section 4).
    queued: bool = False
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
    # An actor publishing an alert holds it until then (epoch seconds); see ALERT_CLAIM_SECONDS.
    alert_claimed_until: int | None = None
    exhausted_alert_claimed_until: int | None = None
    # The token of the last conditional write, so a retried write whose first attempt went through recognises
    # itself when its condition fails (ReturnValuesOnConditionCheckFailure=ALL_OLD) instead of reporting a loss.
    last_write: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status is not RecordStatus.RESOLVED

    def steps_to_retry(self) -> frozenset[OperationType]:
        return frozenset(self.open_steps or [self.operation_type])

    def public_view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(INTERNAL_FIELDS))

    @property
    def complete(self) -> bool:
        """Record, message and alert all exist: the order may now enter COMPENSATION_FAILED."""
        return self.queued and self.alert_sent

    def index_key(self) -> dict[str, str]:
        """The record's position in the status-index: where a page that ends on it continues."""
        return {"id": self.id, "status": self.status.value, "created_at": self.created_at}


def exhausted_message(retry_count: int, max_retries: int, error: str) -> str:
    return f"retries exhausted after {retry_count} of {max_retries}: {error}"[:2000]


def action_entry(action: Literal["retry", "resolve"], *, by: str, at: str, note: str | None = None) -> dict[str, str]:
    """One entry of a record's audit trail of operator actions."""
    entry = {"action": action, "by": by, "at": at}
    if note:
        entry["note"] = note
    return entry


def compensation_id(order_id: str, operation: OperationType, generation: int = 1) -> str:
    """One open record per order and failed step, so recording the same failure twice finds the first.

    A resolved record is closed for good: the next failure of the step is generation 2, 3, ... with its own id.
    """
    base = f"fc_{order_id}_{operation.value}"
    return base if generation <= 1 else f"{base}_g{generation}"


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
        key_attempts: dict[str, int] | None = None,
    ) -> FailedCompensation:
        """Make sure a failed step has an open record, its queue message and its one alert; return the record.

        Re-running it completes whatever an earlier run left out (the same open record is found by its id).
        Raises RecordIncomplete when any part could not be made, so the caller leaves the order due.
        """
        try:
            record = self._open_record(order_id, customer_id, operation, authorization_id, error, key_attempts)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("could not write the failed-compensation record", extra={"order_id": order_id})
            raise RecordIncomplete(f"record not written: {exc}") from exc
        return self.complete(record)

    def complete(self, record: FailedCompensation, *, message_exists: bool = False) -> FailedCompensation:
        """Queue the message and send the alert an open record still lacks; raises RecordIncomplete if AWS refuses.

        `message_exists`: the caller is processing the record's message, so only the flag is missing.
        """
        if not record.is_open:
            return record
        try:
            if not record.queued:
                if not message_exists:
                    self.send_message(record.id)
                record = self._set(record.id, "SET queued = :true", {":true": {"BOOL": True}}) or record
            if not record.alert_sent:
                error = record.alert_error or record.error_message
                record = self._alert_once(record, AlertKind.COMPENSATION_FAILED, error)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("failed-compensation record left incomplete", extra={"compensation_id": record.id})
            raise RecordIncomplete(f"record {record.id} incomplete: {exc}", record_id=record.id) from exc
        return record

    def _open_record(
        self,
        order_id: str,
        customer_id: str | None,
        operation: OperationType,
        authorization_id: str | None,
        error: str,
        key_attempts: dict[str, int] | None,
    ) -> FailedCompensation:
        """The open record of this failure: found, or written as the next generation after resolved ones."""
        token = uuid.uuid4().hex
        generation = 1
        while True:
            now = iso(self._clock())
            record = FailedCompensation(
                id=compensation_id(order_id, operation, generation),
                order_id=order_id,
                customer_id=customer_id,
                operation_type=operation,
                authorization_id=authorization_id,
                error_message=error[:2000] or "unknown error",
                alert_error=error[:2000] or "unknown error",
                max_retries=self._max_retries,
                generation=generation,
                created_at=now,
                updated_at=now,
                key_attempts=key_attempts or {},
                last_write=token,
            )
            existing = self._put_new(record)
            if existing is None or existing.last_write == token:
                # Written now, or by this very write's first attempt whose answer was lost.
                metrics.add_metric(name="CompensationFailed", unit=MetricUnit.Count, value=1)
                return existing or record
            if existing.is_open:
                return existing
            generation = existing.generation + 1

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
        error = error[:2000] or "unknown error"
        values = {
            ":count": {"N": str(count)},
            ":expected": {"N": str(record.retry_count)},
            ":status": {"S": status.value},
            ":error": {"S": error},
            ":keys": serialize(key_attempts),
            ":steps": serialize([step.value for step in open_steps]),
            ":now": {"S": now},
        }
        sets = (
            "retry_count = :count, #status = :status, error_message = :error, key_attempts = :keys, "
            "open_steps = :steps, updated_at = :now, last_attempt_at = :now"
        )
        if used_up:
            # The exhausted alert's text, written once: a re-send after a later redriven try says the same.
            sets += ", exhausted_error = if_not_exists(exhausted_error, :exhausted)"
            values[":exhausted"] = {"S": exhausted_message(count, record.max_retries, error)}
        return self._update(
            record.id,
            f"SET {sets} REMOVE lease_owner, lease_until",
            "attribute_exists(id) AND #status <> :resolved AND retry_count = :expected",
            values,
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
        """The one `compensation_exhausted` alert of a record; False when already sent or AWS refused."""
        if record.exhausted_alert_sent:
            return False
        error = record.exhausted_error or exhausted_message(
            record.retry_count, record.max_retries, record.error_message
        )
        try:
            self._alert_once(record, AlertKind.COMPENSATION_EXHAUSTED, error)
        except (ClientError, BotoCoreError, RecordIncomplete):
            logger.exception("exhausted alert not sent yet", extra={"compensation_id": record.id})
            return False
        return True

    def release_claim(self, record_id: str, *, owner: str) -> None:
        """Give back a processor's lease on a record it will not retry now (best effort: a lease runs out anyway)."""
        try:
            self._update(
                record_id,
                "SET updated_at = updated_at REMOVE lease_owner, lease_until",
                "lease_owner = :owner",
                {":owner": {"S": owner}},
            )
        except (ClientError, BotoCoreError):
            logger.exception("could not release the record's lease", extra={"compensation_id": record_id})

    def _update(self, record_id: str, update: str, condition: str, values: dict[str, Any]) -> FailedCompensation | None:
        """One conditional write; None when the condition fails because of someone else's write.

        Each write carries a fresh token (`last_write`) and asks for the old item when its condition fails: a
        write botocore retried after its first attempt went through (the answer was lost) finds its own token
        there and returns that item as its result, instead of reporting a conflict with itself.
        """
        token = uuid.uuid4().hex
        if update.startswith("SET "):
            update = f"SET last_write = :write, {update[4:]}"
        else:
            update = f"SET last_write = :write {update}"
        condition = f"({condition}) AND (attribute_not_exists(last_write) OR last_write <> :write)"
        values = {**values, ":write": {"S": token}}
        text = update + condition
        names = {"#status": "status"} if "#status" in text else {}
        if ":resolved" in text:
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
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            if old and old.get("last_write") == {"S": token}:
                return FailedCompensation.model_validate(from_item(old))
            return None
        return FailedCompensation.model_validate(from_item(answer["Attributes"]))

    def _put_new(self, record: FailedCompensation) -> FailedCompensation | None:
        """Write `record` if its id is free: None when written, else the record already there."""
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=to_item(record),
                ConditionExpression="attribute_not_exists(id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
        existing = FailedCompensation.model_validate(from_item(old)) if old else self.get(record.id)
        if existing is None:  # pragma: no cover - written and gone: records are never deleted
            raise RuntimeError(f"failed-compensation record {record.id} vanished")
        return existing

    def send_message(self, record_id: str, *, delay_seconds: int = 0) -> None:
        """Queue `{"compensation_id": id}` for the dlq_processor; raises when SQS refuses."""
        self._sqs.send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps({"compensation_id": record_id}),
            DelaySeconds=delay_seconds,
        )

    def _alert_once(self, record: FailedCompensation, kind: AlertKind, error: str) -> FailedCompensation:
        """Publish one alert of `kind` for the record, at most once while nothing fails; raise if AWS refuses.

        Claim, publish, then mark sent. A claim is a lease (ALERT_CLAIM_SECONDS), so an actor that crashed after
        claiming leaves the alert to the next one instead of losing it. The only window for a second alert is a
        publish that went through whose "sent" mark was then lost (a crash, SNS's answer lost, DynamoDB refusing
        MARK_SENT_TRIES times): it is re-sent identical (same compensation_id, kind and `at`), which pagers
        collapse by key. Losing an alert is worse than a duplicate, so this errs towards the duplicate.
        """
        flag = "alert_sent" if kind is AlertKind.COMPENSATION_FAILED else "exhausted_alert_sent"
        claim = "alert_claimed_until" if kind is AlertKind.COMPENSATION_FAILED else "exhausted_alert_claimed_until"
        now = int(self._clock())
        claimed = self._update(
            record.id,
            f"SET {claim} = :until",
            f"attribute_exists(id) AND (attribute_not_exists({flag}) OR {flag} <> :true) "
            f"AND (attribute_not_exists({claim}) OR {claim} < :now)",
            {":until": {"N": str(now + ALERT_CLAIM_SECONDS)}, ":now": {"N": str(now)}, ":true": {"BOOL": True}},
        )
        if claimed is None:
            current = self.get(record.id) or record
            if getattr(current, flag):
                return current
            raise RecordIncomplete(f"another actor is sending the alert of {record.id}", record_id=record.id)
        try:
            self._alert(claimed, error=error, kind=kind)
        except (ClientError, BotoCoreError):
            logger.exception("could not send the alert", extra={"compensation_id": record.id, "kind": kind.value})
            # Give the claim back so the next actor publishes at once; if this write fails too, the claim runs out.
            self._set(record.id, f"REMOVE {claim}", {}, quiet=True)
            raise
        for attempt in range(MARK_SENT_TRIES):
            try:
                marked = self._set(record.id, f"SET {flag} = :true REMOVE {claim}", {":true": {"BOOL": True}})
                return marked or claimed.model_copy(update={flag: True})
            except (ClientError, BotoCoreError):
                logger.exception("alert sent but not yet marked", extra={"compensation_id": record.id})
                if attempt == MARK_SENT_TRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _set(
        self, record_id: str, update: str, values: dict[str, Any], *, quiet: bool = False
    ) -> FailedCompensation | None:
        """An update of an existing record that needs no other condition; `quiet` logs an AWS error instead."""
        try:
            return self._update(record_id, update, "attribute_exists(id)", values)
        except (ClientError, BotoCoreError):
            if not quiet:
                raise
            logger.exception("could not update the failed-compensation record", extra={"compensation_id": record_id})
            return None

    def _alert(self, record: FailedCompensation, *, error: str, kind: AlertKind) -> None:
        """Publish one alert; raises when SNS refuses. Deterministic per record and kind (`at` is the record's
        created_at), so a re-send after a lost answer is the same alert."""
        self._alerts.send(
            Alert(
                kind=kind,
                severity="critical",
                order_id=record.order_id,
                customer_id=record.customer_id,
                compensation_id=record.id,
                operation_type=record.operation_type.value,
                error=error,
                dlq_recorded=True,
                at=record.created_at,
            )
        )
