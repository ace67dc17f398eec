"""Compensation: void what an order holds (refund what it captured), release its reservation, record failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from checkout.charges import Charges, Outcome, StepResult
from checkout.deadline import MIN_CALL_SECONDS, Deadline, OutOfTime
from checkout.failed_compensations import (
    FailedCompensation,
    FailedCompensationLedger,
    OperationType,
    RecordIncomplete,
)
from checkout.observability import logger
from checkout.orders import Order
from checkout.saga import Saga, SagaState, Step, idempotency_key
from checkout.warehouse import Warehouse, WarehouseError, WarehouseRejected, WarehouseUnavailable


@dataclass
class CompensationSteps:
    """What running the steps achieved; `failed` names each step that did not complete."""

    failed: list[OperationType] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    key_attempts: dict[str, int] = field(default_factory=dict)
    refund_id: str | None = None
    authorization_id: str | None = None
    provider_fault: bool = False
    # The run ran out of Lambda time before a step could be judged: not a failure, the order is left due.
    out_of_time: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def operation(self) -> OperationType:
        return self.failed[0] if len(self.failed) == 1 else OperationType.ORDER_COMPENSATION

    @property
    def error(self) -> str:
        return "; ".join(self.errors)


class Compensator:
    def __init__(
        self,
        *,
        saga: Saga,
        charges: Charges,
        warehouse: Warehouse,
        ledger: FailedCompensationLedger,
        warehouse_timeout: float,
    ) -> None:
        self._saga = saga
        self._charges = charges
        self._warehouse = warehouse
        self._ledger = ledger
        self._warehouse_timeout = warehouse_timeout

    def empty_search_is_proof(self, order: Order, now: float) -> bool:
        """ARCHITECTURE.md section 4: an empty search proves nothing held only after PAYMENT_SEARCH_LAG_SECONDS."""
        return self._charges.empty_search_is_proof(order, now)

    def run_steps(
        self, order: Order, deadline: Deadline, *, trust_empty_search: bool, nothing_held: bool = False
    ) -> CompensationSteps:
        """Void (or refund) and release. Each step is idempotent under the order's keys, so re-running is safe.

        `nothing_held`: the caller has just proven the provider holds nothing for the order; no void is sent.
        """
        steps = CompensationSteps(key_attempts=dict(order.key_attempts), authorization_id=order.authorization_id)
        if nothing_held:
            voided = StepResult(Outcome.NOTHING_HELD)
        else:
            voided = self._charges.void(order, deadline, trust_empty_search=trust_empty_search)
        if voided.next_key_attempt is not None:
            steps.key_attempts[Step.VOID] = voided.next_key_attempt
        if voided.intent is not None:
            steps.authorization_id = voided.intent.id
        if voided.outcome is Outcome.ALREADY_CAPTURED and voided.intent is not None:
            refunded = self._charges.refund(order, voided.intent, deadline)
            steps.refund_id = refunded.refund_id
            if refunded.outcome is not Outcome.REFUNDED:
                steps.failed.append(OperationType.REFUND)
                steps.errors.append(f"refund: {refunded.error}")
        elif voided.outcome not in (Outcome.VOIDED, Outcome.NOTHING_HELD):
            steps.failed.append(OperationType.VOID_AUTHORIZATION)
            steps.errors.append(f"void: {voided.error}")
            # A void (or its read-back) cut short by the invocation's end proves nothing about the provider.
            if deadline.has_time_for(MIN_CALL_SECONDS):
                steps.provider_fault = True
            else:
                steps.out_of_time = True
        if order.reservation_id:
            release_attempt = order.key_attempt(Step.RELEASE)
            try:
                self._warehouse.release(
                    order.reservation_id,
                    idempotency_key=idempotency_key(order.order_id, Step.RELEASE, release_attempt),
                    timeout=deadline.call_timeout(self._warehouse_timeout),
                )
            except WarehouseRejected as exc:
                if exc.status != 404:  # an unknown reservation holds nothing: it expired or never was
                    steps.failed.append(OperationType.RELEASE_RESERVATION)
                    steps.errors.append(f"release: {exc}")
            except OutOfTime as exc:
                steps.failed.append(OperationType.RELEASE_RESERVATION)
                steps.errors.append(f"release: {exc}")
                steps.out_of_time = True
            except WarehouseError as exc:
                steps.failed.append(OperationType.RELEASE_RESERVATION)
                steps.errors.append(f"release: {exc}")
                if isinstance(exc, WarehouseUnavailable) and exc.status is not None and exc.status >= 500:
                    # An answer came back: a stored 5xx the warehouse replays under this key forever. Releasing
                    # is idempotent by nature (a released reservation answers "released"), so the next try may
                    # use a new key. After a timeout or a dropped connection the first request may still be
                    # running: the same key goes again (section 4's second-key rule).
                    steps.key_attempts[Step.RELEASE] = release_attempt + 1
        return steps

    def record(self, order: Order, steps: CompensationSteps) -> FailedCompensation | None:
        """Put a failed compensation in the ledger: record, queue message, one alert; None when incomplete.

        An incomplete record is completed by whoever next records the same failure of the order.
        """
        try:
            return self._record(order, steps)
        except RecordIncomplete:
            return None

    def _record(self, order: Order, steps: CompensationSteps) -> FailedCompensation:
        logger.error(
            "compensation failed",
            extra={"order_id": order.order_id, "operation": steps.operation, "error": steps.error},
        )
        return self._ledger.record_failure(
            order_id=order.order_id,
            customer_id=order.customer_id,
            operation=steps.operation,
            authorization_id=steps.authorization_id,
            error=steps.error,
            key_attempts=steps.key_attempts,
        )

    def compensate(self, order: Order, deadline: Deadline, *, reason: str, trust_empty_search: bool) -> Order:
        """Compensate an order the caller has moved to COMPENSATING (and so holds): → COMPENSATED or FAILED."""
        assert order.saga_state is SagaState.COMPENSATING
        steps = self.run_steps(order, deadline, trust_empty_search=trust_empty_search)
        return self.finish(order, steps, reason=reason)

    def finish(self, order: Order, steps: CompensationSteps, *, reason: str) -> Order:
        """Write what the steps achieved, through COMPENSATING: COMPENSATED; or, once its record, message and alert
        all exist, COMPENSATION_FAILED; else the order stays COMPENSATING and due (section 4)."""
        path = [] if order.saga_state is SagaState.COMPENSATING else [SagaState.COMPENSATING]
        # The order's earlier records are closed before the order moves on, never after: an order that is final
        # (or COMPENSATION_FAILED on its newest record) is touched by no actor again, so a record left open
        # behind it, without a message if its first try could not queue one, would stay open for ever.
        if steps.ok:
            if not self._close_open_records(order, steps, keep=None, why="compensated before it was complete"):
                return self.leave_due(order, steps, reason=f"{reason}: compensated; earlier records not closed yet")
            return self._saga.move(
                order,
                *path,
                SagaState.COMPENSATED,
                reason=reason,
                key_attempts=steps.key_attempts,
                refund_id=steps.refund_id,
                authorization_id=steps.authorization_id,
            )
        if steps.out_of_time:
            return self.leave_due(order, steps, reason=f"{reason}: out of time, left due")
        try:
            record = self._record(order, steps)
        except RecordIncomplete as exc:
            return self.leave_due(
                order, steps, reason=f"{reason}; {steps.error}; record incomplete", compensation_id=exc.record_id
            )
        # Every step was tried again just now: what still fails is in this record, earlier ones are superseded.
        if not self._close_open_records(order, steps, keep=record.id, why=f"superseded by {record.id}"):
            return self.leave_due(
                order,
                steps,
                reason=f"{reason}; {steps.error}; earlier records not closed yet",
                compensation_id=record.id,
            )
        return self._saga.move(
            order,
            *path,
            SagaState.COMPENSATION_FAILED,
            reason=f"{reason}; {steps.error}"[:500],
            key_attempts=steps.key_attempts,
            refund_id=steps.refund_id,
            authorization_id=steps.authorization_id,
            last_error=steps.error[:2000],
            compensation_id=record.id,
        )

    def leave_due(
        self, order: Order, steps: CompensationSteps, *, reason: str, compensation_id: str | None = None
    ) -> Order:
        """Keep the order COMPENSATING and due, with what the steps learnt (key attempts, the intent).

        Entering COMPENSATING is one history entry; staying there adds none, so the item stays small.
        """
        changes = {
            "key_attempts": steps.key_attempts,
            "refund_id": steps.refund_id or order.refund_id,
            "authorization_id": steps.authorization_id or order.authorization_id,
            "last_error": steps.error[:2000] or order.last_error,
            "compensation_id": compensation_id or order.compensation_id,
        }
        if order.saga_state is SagaState.COMPENSATING:
            return self._saga.reschedule(order, **changes)
        return self._saga.move(order, SagaState.COMPENSATING, reason=reason[:500], **changes)

    def _close_open_records(self, order: Order, steps: CompensationSteps, *, keep: str | None, why: str) -> bool:
        """Resolve the order's other open records: begun by an earlier try whose write or message or alert failed.

        One Query on the order-index per compensated order (compensation is itself the rare path). False when
        AWS refused: the caller then leaves the order due, and its next run closes them.
        """
        try:
            for record in self._ledger.for_order(order.order_id):
                if record.is_open and record.id != keep:
                    self._ledger.resolve(record.id, by="compensation", key_attempts=steps.key_attempts)
                    logger.info("open record closed", extra={"compensation_id": record.id, "why": why})
        except (ClientError, BotoCoreError):
            logger.exception("could not close the order's earlier records", extra={"order_id": order.order_id})
            return False
        return True
