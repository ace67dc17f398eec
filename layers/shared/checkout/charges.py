"""An order's payment steps (authorize, capture, void, refund), each settled by reading the intent back.

The provider replays the first answer to a key, a stored 5xx included, so no answer other than a clean
success is taken as the truth: the intent is read back first. A second key `{order_id}:{step}:{n}` needs
both an answer to the earlier key (an error the provider stored and will replay) and a read-back proving
the step did not happen; after a timeout or a lost answer the first request may still be running, so the
same key is sent again (ARCHITECTURE.md section 4).
"""

from __future__ import annotations

import dataclasses
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

# Stripe may prune idempotency keys after 24 h (docs.stripe.com/api/idempotent_requests); an authorize re-sent
# later could create a second hold instead of replaying the first, so none is re-sent after 23 h.
AUTHORIZE_RESEND_LIMIT_SECONDS = 23 * 3600


class Outcome(StrEnum):
    AUTHORIZED = "authorized"
    ACTION_REQUIRED = "action_required"
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
    # The authorize answer was a replay of a stored one: this send created nothing new at the provider.
    replayed: bool = False


class Charges:
    def __init__(self, gateway: PaymentGateway, *, payment_timeout: float, search_lag_seconds: int = 3600) -> None:
        self._gateway = gateway
        self._cap = payment_timeout
        self._search_lag = search_lag_seconds

    # the rules of section 4 ------------------------------------------------------------------
    def empty_search_is_proof(self, order: Order, now: float) -> bool:
        """An empty search means "nothing held" only once the last authorize send is older than the search lag."""
        return now - order.last_authorize_sent_at >= self._search_lag

    @staticmethod
    def may_resend_authorize(order: Order, now: float) -> bool:
        """The provider still knows the first send's key: it replays instead of making a second hold."""
        return now - order.created_at_epoch < AUTHORIZE_RESEND_LIMIT_SECONDS

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
        except PaymentRejected as exc:
            if exc.param == "payment_method":
                # An unknown or unusable payment method (400 resource_missing): refused, nothing held.
                return StepResult(Outcome.DECLINED, error=str(exc))
            if not resumed:
                return StepResult(Outcome.NOT_SENT, error=str(exc), provider_fault=True)
            return self._authorization_by_search(order, deadline, str(exc), timed_out=False)
        except PaymentNotSent as exc:
            if not resumed:
                return StepResult(Outcome.NOT_SENT, error=str(exc), provider_fault=True)
            return self._authorization_by_search(order, deadline, str(exc), timed_out=False)
        except PaymentOutcomeUnknown as exc:
            result = self._authorization_by_search(order, deadline, str(exc), timed_out=exc.timed_out)
            return dataclasses.replace(result, replayed=exc.replayed)
        if resumed:
            # The answer may be a replay of an old state: read the intent itself.
            try:
                intent = self._gateway.retrieve(intent.id, timeout=deadline.call_timeout(self._cap))
            except (PaymentError, OutOfTime) as exc:
                return StepResult(Outcome.UNKNOWN, intent=intent, error=str(exc))
        return _authorization_from_intent(intent, error=None)

    def find_authorization(self, order: Order, deadline: Deadline, *, trust_empty: bool) -> StepResult:
        """What the provider holds for this order: AUTHORIZED/NOTHING_HELD/..., or UNKNOWN."""
        if order.authorization_id:
            return self.read_authorization(order.authorization_id, deadline)
        result = self._authorization_by_search(order, deadline, None, timed_out=False)
        if result.outcome is Outcome.UNKNOWN and result.intent is None and trust_empty and not result.provider_fault:
            return StepResult(Outcome.NOTHING_HELD)
        return result

    def read_authorization(self, intent_id: str, deadline: Deadline) -> StepResult:
        """Read a known intent back and say what it means for the order."""
        try:
            intent = self._gateway.retrieve(intent_id, timeout=deadline.call_timeout(self._cap))
        except (PaymentError, OutOfTime) as exc:
            return StepResult(Outcome.UNKNOWN, error=str(exc), provider_fault=isinstance(exc, PaymentError))
        return _authorization_from_intent(intent, error=None)

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
        for intent in found:
            if intent.needs_action or intent.processing:
                return _authorization_from_intent(intent, error=error)
        if found and all(i.failed or i.canceled for i in found):
            outcome = Outcome.DECLINED if any(i.failed for i in found) else Outcome.NOTHING_HELD
            return StepResult(outcome, intent=found[0], error=error)
        # Nothing found: search lags, so only a caller that knows the last send is old may trust this.
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
            if exc.intent is not None and (exc.intent.captured or exc.intent.canceled):
                return self._capture_from_intent(order, exc.intent, str(exc), attempt, bump=False)
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=False)
        except PaymentNotSent as exc:
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=False)
        except PaymentOutcomeUnknown as exc:
            # A timeout or lost answer: the capture may still be running; only a stored error allows a new key.
            return self._capture_read_back(
                order, deadline, str(exc), attempt, bump=exc.answered, timed_out=exc.timed_out
            )
        except (PaymentRejected, PaymentDeclined) as exc:
            return self._capture_read_back(order, deadline, str(exc), attempt, bump=True)
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
        return self._capture_from_intent(order, intent, error, attempt, bump=bump, timed_out=timed_out)

    def _capture_from_intent(
        self, order: Order, intent: Intent, error: str, attempt: int, *, bump: bool, timed_out: bool = False
    ) -> StepResult:
        if intent.captured:
            return _captured(order, intent)
        if intent.held or intent.processing:
            # Proven not captured after an answer: the next attempt may use a fresh key (the old one replays its
            # stored error for ever). Otherwise the same key again: the first request may still be running.
            return StepResult(
                Outcome.NOT_CAPTURED,
                intent=intent,
                error=error,
                next_key_attempt=attempt + 1 if bump and intent.held else attempt,
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
        except PaymentUnexpectedState as exc:
            if exc.intent is not None and (exc.intent.captured or exc.intent.canceled):
                return _void_from_intent(exc.intent, str(exc), attempt, bump=False)
            return self._void_read_back(intent_id, deadline, str(exc), attempt, bump=False)
        except PaymentOutcomeUnknown as exc:
            return self._void_read_back(intent_id, deadline, str(exc), attempt, bump=exc.answered)
        except PaymentNotSent as exc:
            return self._void_read_back(intent_id, deadline, str(exc), attempt, bump=False)
        except PaymentError as exc:
            return self._void_read_back(intent_id, deadline, str(exc), attempt, bump=True)
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
        return _void_from_intent(intent, error, attempt, bump=bump)

    # refund ----------------------------------------------------------------------------------
    def refund(self, order: Order, intent: Intent, deadline: Deadline) -> StepResult:
        """Refund a capture on a cancelled order. One key only: a refund is never sent twice.

        A PaymentIntent carries no refunded amount; the refunds are read back as Refund objects
        (`GET /v1/refunds?payment_intent=`) whenever the answer is not a clean success.
        """
        amount = intent.amount_received or order.amount_total
        try:
            refund = self._gateway.refund(
                intent.id,
                amount=amount,
                idempotency_key=idempotency_key(order.order_id, Step.REFUND),
                timeout=deadline.call_timeout(self._cap),
            )
        except (PaymentError, OutOfTime) as exc:
            return self._refund_read_back(intent, amount, deadline, str(exc))
        if refund.counts:
            return StepResult(Outcome.REFUNDED, intent=intent, refund_id=refund.id)
        return StepResult(Outcome.FAILED, intent=intent, error=f"refund {refund.id} is {refund.status}")

    def _refund_read_back(self, intent: Intent, amount: int, deadline: Deadline, error: str) -> StepResult:
        try:
            refunds = self._gateway.list_refunds(intent.id, timeout=deadline.call_timeout(self._cap))
        except (PaymentError, OutOfTime) as exc:
            return StepResult(Outcome.FAILED, intent=intent, error=f"{error}; read-back failed: {exc}")
        counted = [r for r in refunds if r.counts]
        if counted and sum(r.amount for r in counted) >= amount:
            return StepResult(Outcome.REFUNDED, intent=intent, refund_id=counted[-1].id)
        return StepResult(Outcome.FAILED, intent=intent, error=error)


def _authorization_from_intent(intent: Intent, *, error: str | None) -> StepResult:
    if intent.held or intent.captured:
        return StepResult(Outcome.AUTHORIZED, intent=intent, error=error)
    if intent.canceled:
        return StepResult(Outcome.NOTHING_HELD, intent=intent, error=error)
    if intent.needs_action:
        return StepResult(Outcome.ACTION_REQUIRED, intent=intent, error=error)
    if intent.failed:
        # requires_payment_method: declined, or 3-D Secure failed; nothing is held.
        return StepResult(Outcome.DECLINED, intent=intent, error=error or f"intent is {intent.status}")
    # processing, or a status this code does not know: the intent exists but its outcome is not settled yet.
    return StepResult(Outcome.UNKNOWN, intent=intent, error=error or f"intent is {intent.status}")


def _void_from_intent(intent: Intent, error: str, attempt: int, *, bump: bool) -> StepResult:
    if intent.canceled or intent.failed:
        return StepResult(Outcome.VOIDED, intent=intent, next_key_attempt=attempt)
    if intent.captured:
        return StepResult(Outcome.ALREADY_CAPTURED, intent=intent, error=error, next_key_attempt=attempt)
    # Still cancelable: a fresh key only after an answer, never while the first cancel may be running.
    return StepResult(Outcome.FAILED, intent=intent, error=error, next_key_attempt=attempt + 1 if bump else attempt)


def _captured(order: Order, intent: Intent) -> StepResult:
    if intent.amount_received != order.amount_total:
        logger.error(
            "captured amount differs from the order total",
            extra={"order_id": order.order_id, "captured": intent.amount_received, "total": order.amount_total},
        )
    return StepResult(Outcome.CAPTURED, intent=intent)
