"""An order's payment steps (authorize, capture, void, refund), each settled by reading the intent back.

The provider replays the first answer to a key, a stored 5xx included, so no answer other than a clean
success is taken as the truth: the intent is read back first, and a second key `{order_id}:{step}:{n}`
is used only once that read-back proves the step did not happen (ARCHITECTURE.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from checkout.deadline import Deadline, OutOfTime
from checkout.observability import logger
from checkout.orders import Order
from checkout.payments import (
    Intent,
    PaymentDeclined,
    PaymentError,
    PaymentGateway,
    PaymentNotSent,
    PaymentOutcomeUnknown,
    PaymentRejected,
    PaymentUnexpectedState,
)
from checkout.saga import Step, idempotency_key


class Outcome(StrEnum):
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"
    CAPTURED = "captured"
    NOT_CAPTURED = "not_captured"
    CANNOT_CAPTURE = "cannot_capture"
    VOIDED = "voided"
    NOTHING_HELD = "nothing_held"
    ALREADY_CAPTURED = "already_captured"
    REFUNDED = "refunded"
    FAILED = "failed"


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    intent: Intent | None = None
    error: str | None = None
    timed_out: bool = False
    # The key number the next attempt of this step must use (bumped only after a proving read-back).
    next_key_attempt: int | None = None
    # A business failure or provider fault, as opposed to our own lack of time: circuit breakers count these.
    provider_fault: bool = False
    refund_id: str | None = None


class Charges:
    def __init__(self, gateway: PaymentGateway, *, payment_timeout: float) -> None:
        self._gateway = gateway
        self._cap = payment_timeout

    # authorize -------------------------------------------------------------------------------
    def authorize(self, order: Order, deadline: Deadline, *, resumed: bool = False) -> StepResult:
        """Authorize with `{order_id}:authorize`. A resumed order's answer is never trusted without a read-back."""
        try:
            intent = self._gateway.authorize(
                order_id=order.order_id,
                amount=order.amount_total,
                currency=order.currency,
                payment_method=order.payment_method,
                idempotency_key=idempotency_key(order.order_id, Step.AUTHORIZE),
                timeout=deadline.call_timeout(self._cap),
            )
        except OutOfTime as exc:
            outcome = Outcome.UNKNOWN if resumed else Outcome.NOT_SENT
            return StepResult(outcome, error=str(exc))
        except PaymentDeclined as exc:
            return StepResult(Outcome.DECLINED, intent=exc.intent, error=str(exc))
        except (PaymentNotSent, PaymentRejected) as exc:
            if not resumed:
                return StepResult(Outcome.NOT_SENT, error=str(exc), provider_fault=True)
            return self._authorization_by_search(order, deadline, str(exc), timed_out=False)
        except PaymentOutcomeUnknown as exc:
            return self._authorization_by_search(order, deadline, str(exc), timed_out=exc.timed_out)
        if resumed:
            # The answer may be a replay of an old state: read the intent itself.
            try:
                intent = self._gateway.retrieve(intent.id, timeout=deadline.call_timeout(self._cap))
            except (PaymentError, OutOfTime) as exc:
                return StepResult(Outcome.UNKNOWN, error=str(exc))
        return _authorization_from_intent(intent, error=None)

    def find_authorization(self, order: Order, deadline: Deadline, *, trust_empty: bool) -> StepResult:
        """What the provider holds for this order: AUTHORIZED/NOTHING_HELD/..., or UNKNOWN."""
        if order.authorization_id:
            try:
                intent = self._gateway.retrieve(order.authorization_id, timeout=deadline.call_timeout(self._cap))
            except (PaymentError, OutOfTime) as exc:
                return StepResult(Outcome.UNKNOWN, error=str(exc), provider_fault=isinstance(exc, PaymentError))
            return _authorization_from_intent(intent, error=None)
        result = self._authorization_by_search(order, deadline, None, timed_out=False)
        if result.outcome is Outcome.UNKNOWN and result.intent is None and trust_empty and not result.provider_fault:
            return StepResult(Outcome.NOTHING_HELD)
        return result

    def _authorization_by_search(
        self, order: Order, deadline: Deadline, error: str | None, *, timed_out: bool
    ) -> StepResult:
        try:
            found = self._gateway.search_by_order(order.order_id, timeout=deadline.call_timeout(self._cap))
        except (PaymentError, OutOfTime) as exc:
            return StepResult(
                Outcome.UNKNOWN,
                error=error or str(exc),
                timed_out=timed_out,
                provider_fault=isinstance(exc, PaymentError),
            )
        for intent in found:
            if intent.held or intent.captured:
                return _authorization_from_intent(intent, error=error)
        if found and all(i.status == "requires_payment_method" for i in found):
            return StepResult(Outcome.DECLINED, intent=found[0], error=error)
        if found and all(i.canceled for i in found):
            return StepResult(Outcome.NOTHING_HELD, intent=found[0], error=error)
        # Nothing found: search lags, so only a caller that knows the order is old may trust this.
        return StepResult(Outcome.UNKNOWN, error=error or "no intent found for the order", timed_out=timed_out)

    # capture ---------------------------------------------------------------------------------
    def capture(self, order: Order, deadline: Deadline) -> StepResult:
        assert order.authorization_id is not None
        attempt = order.key_attempt(Step.CAPTURE)
        try:
            intent = self._gateway.capture(
                order.authorization_id,
                amount=order.amount_total,
                idempotency_key=idempotency_key(order.order_id, Step.CAPTURE, attempt),
                timeout=deadline.call_timeout(self._cap),
            )
        except OutOfTime as exc:
            return StepResult(Outcome.NOT_CAPTURED, error=str(exc), next_key_attempt=attempt)
        except PaymentUnexpectedState as exc:
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=False, timed_out=False)
        except PaymentNotSent as exc:
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=False, timed_out=False)
        except (PaymentOutcomeUnknown, PaymentRejected, PaymentDeclined) as exc:
            timed_out = isinstance(exc, PaymentOutcomeUnknown) and exc.timed_out
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=True, timed_out=timed_out)
        if intent.captured:
            return _captured(order, intent)
        return self._capture_read_back(order, deadline, f"capture answered {intent.status}", attempt, bump=True)

    def _capture_read_back(
        self, order: Order, deadline: Deadline, error: str, attempt: int, *, bump: bool, timed_out: bool = False
    ) -> StepResult:
        assert order.authorization_id is not None
        try:
            intent = self._gateway.retrieve(order.authorization_id, timeout=deadline.call_timeout(self._cap))
        except (PaymentError, OutOfTime) as exc:
            return StepResult(
                Outcome.UNKNOWN,
                error=f"{error}; read-back failed: {exc}",
                next_key_attempt=attempt,
                timed_out=timed_out,
                provider_fault=True,
            )
        if intent.captured:
            return _captured(order, intent)
        if intent.held:
            # Proven not captured: the next attempt may use a fresh key (the old one may replay a 5xx).
            return StepResult(
                Outcome.NOT_CAPTURED,
                intent=intent,
                error=error,
                next_key_attempt=attempt + 1 if bump else attempt,
                timed_out=timed_out,
                provider_fault=True,
            )
        return StepResult(Outcome.CANNOT_CAPTURE, intent=intent, error=f"{error}; intent is {intent.status}")

    # void ------------------------------------------------------------------------------------
    def void(self, order: Order, deadline: Deadline, *, trust_empty_search: bool) -> StepResult:
        """Cancel whatever the order holds. Already canceled counts as done; captured needs a refund."""
        intent_id = order.authorization_id
        if intent_id is None:
            found = self.find_authorization(order, deadline, trust_empty=trust_empty_search)
            if found.outcome in (Outcome.NOTHING_HELD, Outcome.DECLINED):
                return StepResult(Outcome.NOTHING_HELD, intent=found.intent)
            if found.intent is None:
                return StepResult(Outcome.FAILED, error=found.error or "authorization not found yet")
            intent_id = found.intent.id
        attempt = order.key_attempt(Step.VOID)
        try:
            intent = self._gateway.cancel(
                intent_id,
                idempotency_key=idempotency_key(order.order_id, Step.VOID, attempt),
                timeout=deadline.call_timeout(self._cap),
            )
        except OutOfTime as exc:
            return StepResult(Outcome.FAILED, error=str(exc), next_key_attempt=attempt)
        except PaymentError as exc:
            bump = isinstance(exc, PaymentOutcomeUnknown | PaymentRejected)
            return self._void_read_back(intent_id, deadline, str(exc), attempt, bump=bump)
        if intent.canceled:
            return StepResult(Outcome.VOIDED, intent=intent, next_key_attempt=attempt)
        return self._void_read_back(intent_id, deadline, f"cancel answered {intent.status}", attempt, bump=True)

    def _void_read_back(
        self, intent_id: str, deadline: Deadline, error: str, attempt: int, *, bump: bool
    ) -> StepResult:
        try:
            intent = self._gateway.retrieve(intent_id, timeout=deadline.call_timeout(self._cap))
        except (PaymentError, OutOfTime) as exc:
            return StepResult(Outcome.FAILED, error=f"{error}; read-back failed: {exc}", next_key_attempt=attempt)
        if intent.canceled or intent.status == "requires_payment_method":
            return StepResult(Outcome.VOIDED, intent=intent, next_key_attempt=attempt)
        if intent.captured:
            return StepResult(Outcome.ALREADY_CAPTURED, intent=intent, error=error, next_key_attempt=attempt)
        return StepResult(Outcome.FAILED, intent=intent, error=error, next_key_attempt=attempt + 1 if bump else attempt)

    # refund ----------------------------------------------------------------------------------
    def refund(self, order: Order, intent: Intent, deadline: Deadline) -> StepResult:
        """Refund a capture on a cancelled order. One key only: a refund is never sent twice."""
        if intent.amount_refunded >= intent.amount_received > 0:
            return StepResult(Outcome.REFUNDED, intent=intent)
        try:
            refund = self._gateway.refund(
                intent.id,
                amount=intent.amount_received or order.amount_total,
                idempotency_key=idempotency_key(order.order_id, Step.REFUND),
                timeout=deadline.call_timeout(self._cap),
            )
        except (PaymentError, OutOfTime) as exc:
            try:
                current = self._gateway.retrieve(intent.id, timeout=deadline.call_timeout(self._cap))
            except (PaymentError, OutOfTime):
                return StepResult(Outcome.FAILED, intent=intent, error=str(exc))
            if current.amount_refunded >= current.amount_received > 0:
                return StepResult(Outcome.REFUNDED, intent=current)
            return StepResult(Outcome.FAILED, intent=current, error=str(exc))
        return StepResult(Outcome.REFUNDED, intent=intent, refund_id=refund.id)


def _authorization_from_intent(intent: Intent, *, error: str | None) -> StepResult:
    if intent.held or intent.captured:
        return StepResult(Outcome.AUTHORIZED, intent=intent, error=error)
    if intent.canceled:
        return StepResult(Outcome.NOTHING_HELD, intent=intent, error=error)
    # requires_payment_method / requires_action: the card did not authorize; nothing is held.
    return StepResult(Outcome.DECLINED, intent=intent, error=error or f"intent is {intent.status}")


def _captured(order: Order, intent: Intent) -> StepResult:
    if intent.amount_received != order.amount_total:
        logger.error(
            "captured amount differs from the order total",
            extra={"order_id": order.order_id, "captured": intent.amount_received, "total": order.amount_total},
        )
    return StepResult(Outcome.CAPTURED, intent=intent)
