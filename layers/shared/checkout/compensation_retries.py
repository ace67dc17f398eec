"""Retrying failed compensations: one queue message, one fresh try under the order's keys, the record as the truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from checkout.compensation import Compensator
from checkout.deadline import Deadline
from checkout.failed_compensations import (
    FailedCompensation,
    FailedCompensationLedger,
    OperationType,
    RecordIncomplete,
    RecordStatus,
)
from checkout.observability import MetricUnit, logger, metrics
from checkout.orders import Order, OrderStore
from checkout.saga import ConcurrentUpdate, Saga, SagaState

# Which open steps leave a payment to settle (void, or refund of a capture) and which a reservation to release.
PAYMENT_STEPS = frozenset({OperationType.VOID_AUTHORIZATION, OperationType.REFUND, OperationType.ORDER_COMPENSATION})
RELEASE_STEPS = frozenset({OperationType.RELEASE_RESERVATION, OperationType.ORDER_COMPENSATION})
# A deferred message waits this long before its next delivery, so a busy batch does not spin on it.
DEFER_DELAY_SECONDS = 30
# Orders a resolution re-reads before giving up on a concurrent writer (each loss means someone moved it).
ORDER_MOVE_ATTEMPTS = 3


class MessageOutcome(StrEnum):
    RESOLVED = "resolved"
    ALREADY_RESOLVED = "already_resolved"
    IN_PROGRESS = "in_progress"
    DEFERRED = "deferred"
    RETRY_FAILED = "retry_failed"
    EXHAUSTED = "exhausted"
    MALFORMED = "malformed"
    UNKNOWN_RECORD = "unknown_record"

    @property
    def done(self) -> bool:
        """True when the message may be deleted; False when SQS must deliver it again (or move it to the DLQ)."""
        return self in _DONE


_DONE = frozenset(
    {MessageOutcome.RESOLVED, MessageOutcome.ALREADY_RESOLVED, MessageOutcome.IN_PROGRESS, MessageOutcome.DEFERRED}
)


@dataclass(frozen=True)
class MessageResult:
    outcome: MessageOutcome
    compensation_id: str | None = None
    record: FailedCompensation | None = None
    detail: str = ""


def parse_message(body: str) -> str | None:
    """The compensation id of a queue message `{"compensation_id": "<id>"}`, or None when it is not one."""
    try:
        payload = json.loads(body)
    except (TypeError, ValueError):
        return None
    value = payload.get("compensation_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def seconds_between(start_iso: str, end_iso: str) -> float:
    return (datetime.fromisoformat(end_iso) - datetime.fromisoformat(start_iso)).total_seconds()


def mark_order_compensated(
    store: OrderStore, saga: Saga, order_id: str, *, reason: str, **changes: Any
) -> Order | None:
    """COMPENSATION_FAILED → COMPENSATED, once the money is safe. Any other state is left to its owner.

    An order already COMPENSATED stays as it is; one still COMPENSATING belongs to recovery, which finishes
    it under the same keys. Returns the order as it ends up, or None when it does not exist.
    """
    for _ in range(ORDER_MOVE_ATTEMPTS):
        order = store.get_order(order_id)
        if order is None:
            logger.error("the failed compensation names an order that does not exist", extra={"order_id": order_id})
            return None
        if order.saga_state is not SagaState.COMPENSATION_FAILED:
            if order.saga_state is not SagaState.COMPENSATED:
                logger.warning(
                    "order is not waiting on its failed compensation; left to its owner",
                    extra={"order_id": order_id, "saga_state": order.saga_state},
                )
            return order
        try:
            return saga.move(order, SagaState.COMPENSATED, reason=reason[:500], **changes)
        except ConcurrentUpdate:
            continue
    raise ConcurrentUpdate(f"order {order_id} kept changing while it was being marked compensated")


class CompensationRetrier:
    """What the dlq_processor does with one message. Never raises for a message it can judge."""

    def __init__(
        self,
        *,
        ledger: FailedCompensationLedger,
        store: OrderStore,
        saga: Saga,
        compensator: Compensator,
        clock: Callable[[], float],
        call_budget_seconds: float,
        stale_saga_seconds: int,
        lease_seconds: int,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._saga = saga
        self._compensator = compensator
        self._clock = clock
        # One void (or refund) and one release: what a try needs, or it would burn a delivery half-done.
        self._call_budget = call_budget_seconds
        self._stale = stale_saga_seconds
        self._lease = lease_seconds

    def process(
        self, body: str, deadline: Deadline, *, message_id: str, receive_count: int | None = None
    ) -> MessageResult:
        context = {"message_id": message_id, "receive_count": receive_count}
        compensation_id = parse_message(body)
        if compensation_id is None:
            # It can never succeed: failing it lets the redrive policy park it in the DLQ, where the DLQ
            # alarm shows it to an operator, instead of deleting evidence of a broken producer.
            logger.error("malformed failed-compensation message", extra={**context, "body": body[:500]})
            metrics.add_metric(name="CompensationMessageRejected", unit=MetricUnit.Count, value=1)
            return MessageResult(MessageOutcome.MALFORMED, detail='not a {"compensation_id": ...} message')
        context["compensation_id"] = compensation_id
        record = self._ledger.get(compensation_id)
        if record is None:
            logger.error("message names no failed-compensation record", extra=context)
            metrics.add_metric(name="CompensationMessageRejected", unit=MetricUnit.Count, value=1)
            return MessageResult(MessageOutcome.UNKNOWN_RECORD, compensation_id, detail="no such record")
        if not record.is_open:
            logger.info("record already resolved; nothing to do", extra=context)
            return MessageResult(MessageOutcome.ALREADY_RESOLVED, compensation_id, record)
        if not record.complete:
            # Whoever next touches an incomplete record completes it: this message is its message; the alert
            # may still be missing. If AWS refuses again, the retry goes on and the next delivery tries again.
            try:
                record = self._ledger.complete(record, message_exists=True)
            except RecordIncomplete:
                logger.warning("record still incomplete", extra=context)
        if not deadline.has_time_for(self._call_budget):
            return self._defer(record, context)
        claimed = self._ledger.claim(record, owner=message_id, lease_seconds=self._lease)
        if claimed is None:
            current = self._ledger.get(compensation_id)
            if current is None or not current.is_open:
                return MessageResult(MessageOutcome.ALREADY_RESOLVED, compensation_id, current)
            # Another delivery holds the lease and has its own message in flight: that one carries the retry.
            logger.info("another processor is retrying this record; dropping the duplicate", extra=context)
            return MessageResult(MessageOutcome.IN_PROGRESS, compensation_id, current)
        # SQS moves the message to the DLQ instead of delivering it again once it was received maxReceiveCount
        # (= max_retries) times; a failure now is the record's last automatic try.
        last_delivery = receive_count is not None and receive_count >= record.max_retries
        return self._retry(claimed, deadline, context, last_delivery=last_delivery)

    def _defer(self, record: FailedCompensation, context: dict[str, Any]) -> MessageResult:
        """Too little time for a provider call: re-queue a fresh message instead of burning a delivery.

        A failed delivery would count towards maxReceiveCount without a try, so the message could reach the
        DLQ while the record still has retries left.
        """
        try:
            self._ledger.send_message(record.id, delay_seconds=DEFER_DELAY_SECONDS)
        except (ClientError, BotoCoreError):
            logger.exception("could not defer the message; SQS will deliver it again", extra=context)
            return MessageResult(MessageOutcome.RETRY_FAILED, record.id, record, detail="out of time")
        logger.info("out of time for this message; re-queued for a later try", extra=context)
        return MessageResult(MessageOutcome.DEFERRED, record.id, record)

    def _retry(
        self, record: FailedCompensation, deadline: Deadline, context: dict[str, Any], *, last_delivery: bool
    ) -> MessageResult:
        order = self._store.get_order(record.order_id)
        if order is None:
            return self._failed(
                record,
                "the record's order does not exist",
                record.key_attempts,
                list(record.steps_to_retry()),
                context,
                last_delivery=last_delivery,
            )
        attempt = self._order_for_retry(order, record)
        steps = self._compensator.run_steps(
            attempt,
            deadline,
            # Stripe's search lags (up to an hour in incidents): an empty answer is trusted only once the last
            # authorize send is older than PAYMENT_SEARCH_LAG_SECONDS.
            trust_empty_search=self._compensator.empty_search_is_proof(order, self._clock()),
            # Only the release left: an earlier try voided (or refunded) it, so no void is sent again.
            nothing_held=not record.steps_to_retry() & PAYMENT_STEPS,
        )
        if steps.out_of_time:
            # Running out of time is not a failed try: give the lease back and re-queue the record.
            self._ledger.release_claim(record.id, owner=context["message_id"])
            return self._defer(record, context)
        if not steps.ok:
            return self._failed(
                record, steps.error, steps.key_attempts, steps.failed, context, last_delivery=last_delivery
            )
        reason = f"compensation retried by the dlq_processor ({record.id})"
        mark_order_compensated(
            self._store,
            self._saga,
            order.order_id,
            reason=reason,
            key_attempts=steps.key_attempts,
            # A release-only retry learns no refund: keep the one an earlier try recorded.
            refund_id=steps.refund_id or order.refund_id,
            authorization_id=steps.authorization_id,
        )
        resolved = self._ledger.resolve(record.id, by="dlq_processor", key_attempts=steps.key_attempts)
        if resolved is None:
            return MessageResult(MessageOutcome.ALREADY_RESOLVED, record.id, self._ledger.get(record.id))
        assert resolved.resolved_at is not None
        seconds = seconds_between(resolved.created_at, resolved.resolved_at)
        metrics.add_metric(name="CompensationResolved", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="CompensationResolutionSeconds", unit=MetricUnit.Seconds, value=seconds)
        logger.info("failed compensation resolved by retry", extra={**context, "resolution_seconds": seconds})
        return MessageResult(MessageOutcome.RESOLVED, record.id, resolved)

    @staticmethod
    def _order_for_retry(order: Order, record: FailedCompensation) -> Order:
        """The order as the steps must see it: the furthest key attempts known, the intent the record names,
        and no reservation once only the payment is left (a release that went through is not sent again)."""
        keys = dict(order.key_attempts)
        for step, attempt in record.key_attempts.items():
            keys[step] = max(keys.get(step, 1), attempt)
        update: dict[str, Any] = {
            "key_attempts": keys,
            "authorization_id": order.authorization_id or record.authorization_id,
        }
        if not record.steps_to_retry() & RELEASE_STEPS:
            update["reservation_id"] = None
        return order.model_copy(update=update)

    def _failed(
        self,
        record: FailedCompensation,
        error: str,
        key_attempts: dict[str, int],
        open_steps: list[OperationType],
        context: dict[str, Any],
        *,
        last_delivery: bool,
    ) -> MessageResult:
        updated = self._ledger.record_attempt_failure(
            record, error=error, key_attempts=key_attempts, open_steps=open_steps, last_delivery=last_delivery
        )
        if updated is None:
            current = self._ledger.get(record.id)
            if current is not None and not current.is_open:
                return MessageResult(MessageOutcome.ALREADY_RESOLVED, record.id, current)
            updated = current or record
        metrics.add_metric(name="CompensationRetryFailed", unit=MetricUnit.Count, value=1)
        logger.warning(
            "compensation retry failed",
            extra={**context, "error": error, "retry_count": updated.retry_count, "status": updated.status},
        )
        if updated.status is not RecordStatus.FAILED:
            return MessageResult(MessageOutcome.RETRY_FAILED, record.id, updated, detail=error)
        if self._ledger.alert_exhausted(updated):
            metrics.add_metric(name="CompensationExhausted", unit=MetricUnit.Count, value=1)
            logger.error("compensation retries exhausted; operator alerted", extra=context)
        return MessageResult(MessageOutcome.EXHAUSTED, record.id, updated, detail=error)
