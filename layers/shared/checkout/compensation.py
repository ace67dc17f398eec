"""Compensation: void what an order holds (refund what it captured), release its reservation, record failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from checkout.charges import Charges, Outcome, StepResult
from checkout.deadline import Deadline, OutOfTime
from checkout.failed_compensations import FailedCompensation, FailedCompensationLedger, OperationType
from checkout.observability import logger
from checkout.orders import Order
from checkout.saga import Saga, SagaState, Step, idempotency_key
from checkout.warehouse import Warehouse, WarehouseError, WarehouseRejected


@dataclass
class CompensationSteps:
    """What running the steps achieved; `failed` names each step that did not complete."""

    failed: list[OperationType] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    key_attempts: dict[str, int] = field(default_factory=dict)
    refund_id: str | None = None
    authorization_id: str | None = None
    provider_fault: bool = False

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
            steps.provider_fault = True
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
            except (WarehouseError, OutOfTime) as exc:
                steps.failed.append(OperationType.RELEASE_RESERVATION)
                steps.errors.append(f"release: {exc}")
                if not isinstance(exc, OutOfTime):
                    # The warehouse replays a stored 5xx under the same key forever; releasing is idempotent by
                    # nature (a released reservation answers "released"), so the next try may use a new key.
                    steps.key_attempts[Step.RELEASE] = release_attempt + 1
        return steps

    def record(self, order: Order, steps: CompensationSteps) -> FailedCompensation | None:
        """Put a failed compensation in the ledger: record, queue message, one alert."""
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
        )

    def compensate(self, order: Order, deadline: Deadline, *, reason: str, trust_empty_search: bool) -> Order:
        """Compensate an order the caller has moved to COMPENSATING (and so holds): → COMPENSATED or FAILED."""
        assert order.saga_state is SagaState.COMPENSATING
        steps = self.run_steps(order, deadline, trust_empty_search=trust_empty_search)
        return self.finish(order, steps, reason=reason)

    def finish(self, order: Order, steps: CompensationSteps, *, reason: str) -> Order:
        """Write what the steps achieved, through COMPENSATING: COMPENSATED, or recorded and COMPENSATION_FAILED."""
        path = [] if order.saga_state is SagaState.COMPENSATING else [SagaState.COMPENSATING]
        if steps.ok:
            return self._saga.move(
                order,
                *path,
                SagaState.COMPENSATED,
                reason=reason,
                key_attempts=steps.key_attempts,
                refund_id=steps.refund_id,
                authorization_id=steps.authorization_id,
            )
        record = self.record(order, steps)
        return self._saga.move(
            order,
            *path,
            SagaState.COMPENSATION_FAILED,
            reason=f"{reason}; {steps.error}"[:500],
            key_attempts=steps.key_attempts,
            refund_id=steps.refund_id,
            authorization_id=steps.authorization_id,
            last_error=steps.error[:2000],
            compensation_id=record.id if record else None,
        )
