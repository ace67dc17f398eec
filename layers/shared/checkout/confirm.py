"""Confirming a checkout: record the order, authorize, record, capture; every unclear outcome left recoverable."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from checkout.charges import Charges, Outcome, StepResult
from checkout.compensation import Compensator
from checkout.deadline import Deadline
from checkout.errors import (
    ConfirmInProgress,
    OrderNotFound,
    OrderNotRecorded,
    PaymentDeclinedError,
    PaymentOutcomeUnknownError,
    PaymentTimeout,
    PaymentUnavailable,
    SessionClosed,
    SessionNotFound,
    ValidationFailed,
)
from checkout.observability import MetricUnit, logger, metrics
from checkout.orders import CheckoutSession, HistoryEntry, Order, OrderStore
from checkout.saga import (
    REOPENS_SESSION,
    STATUS,
    ConcurrentUpdate,
    OrderStatus,
    Saga,
    SagaState,
    Step,
    iso,
)

S = SagaState


@dataclass(frozen=True)
class ConfirmResult:
    order: Order
    http_status: int
    # 3-D Secure: what the shop's page needs for Stripe.js handleNextAction. Read from the intent on each
    # answer, never stored (the client secret lets its holder confirm the intent).
    client_secret: str | None = None
    next_action: dict[str, Any] | None = None

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "order_id": self.order.order_id,
            "status": self.order.status.value,
            "amount_total": self.order.amount_total,
            "currency": self.order.currency,
        }
        if self.order.saga_state is S.AUTH_ACTION_REQUIRED:
            body.update(client_secret=self.client_secret, next_action=self.next_action)
        return body


class CheckoutConfirmer:
    def __init__(
        self,
        *,
        store: OrderStore,
        saga: Saga,
        charges: Charges,
        compensator: Callable[[], Compensator],
        clock: Callable[[], float],
        capture_backoff_base_seconds: int,
        stale_saga_seconds: int,
        lease_seconds: int,
    ) -> None:
        self._store = store
        self._saga = saga
        self._charges = charges
        # Built on first use: only a failed order write needs it, so a cold start does not pay for it.
        self._compensator = compensator
        self._clock = clock
        self._backoff = capture_backoff_base_seconds
        self._stale = stale_saga_seconds
        self._lease = lease_seconds

    def confirm(
        self,
        *,
        session_id: str,
        customer_id: str,
        payment_method: str | None,
        idempotency_key: str | None,
        deadline: Deadline,
    ) -> ConfirmResult:
        session = self._session(session_id, customer_id)
        for _ in range(2):
            if session.order_id is not None:
                existing = self._store.get_order(session.order_id)
                if existing is not None and existing.saga_state not in REOPENS_SESSION:
                    return self._existing(existing, deadline)
            if session.expires_at_epoch <= self._clock():
                raise SessionNotFound(f"checkout session {session_id} has expired")
            order = self._new_order(session, payment_method, idempotency_key)
            try:
                self._store.create_order(order, self._saga.work_for(order, int(self._clock())), session.order_id)
            except ConcurrentUpdate:
                # Another confirm of this session won the race: answer with its order.
                session = self._session(session_id, customer_id)
                continue
            logger.set_correlation_id(order.order_id)
            return self._authorize(order, deadline, resumed=False)
        raise ConfirmInProgress("another confirm of this session is in progress", order_id=session.order_id)

    def get_order(self, order_id: str, customer_id: str) -> Order:
        order = self._store.get_order(order_id)
        if order is None or order.customer_id != customer_id:
            raise OrderNotFound(f"order {order_id} not found")
        return order

    # -----------------------------------------------------------------------------------------
    def _session(self, session_id: str, customer_id: str) -> CheckoutSession:
        session = self._store.get_session(session_id)
        if session is None or session.customer_id != customer_id:
            raise SessionNotFound(f"checkout session {session_id} not found")
        return session

    def _new_order(self, session: CheckoutSession, payment_method: str | None, idempotency_key: str | None) -> Order:
        method = payment_method or session.payment_method
        if not method:
            raise ValidationFailed("payment_method is required: set it on the session or in the confirm body")
        now = self._clock()
        at = iso(now)
        return Order(
            order_id=f"ord_{uuid.uuid4().hex}",
            session_id=session.session_id,
            customer_id=session.customer_id,
            currency=session.currency,
            amount_total=session.amount_total,
            items=session.items,
            payment_method=method,
            reservation_id=session.reservation_id,
            saga_state=S.AUTHORIZING,
            status=STATUS[S.AUTHORIZING],
            version=1,
            history=[HistoryEntry(at=at, from_state=None, to=S.AUTHORIZING, reason="order recorded before authorize")],
            created_at=at,
            created_at_epoch=int(now),
            updated_at=at,
            idempotency_key=idempotency_key,
        )

    def _existing(self, order: Order, deadline: Deadline) -> ConfirmResult:
        logger.set_correlation_id(order.order_id)
        if order.status in (OrderStatus.CONFIRMED, OrderStatus.PAYMENT_PENDING):
            return ConfirmResult(order, 200)
        if order.status is OrderStatus.CANCELLED:
            raise SessionClosed("this checkout's order was cancelled; start a new checkout", order_id=order.order_id)
        if order.saga_state is S.AUTH_UNKNOWN:
            claimed = self._claim(order)
            if not self._charges.may_resend_authorize(claimed, self._clock()):
                # Stripe may have pruned the key: a re-send could make a second hold. Recovery settles it by search.
                self._saga.release(claimed)
                raise PaymentOutcomeUnknownError(
                    "the payment outcome is not known yet; it is being settled", order_id=order.order_id
                )
            # The send time is written before the send: an empty search proves nothing until it is old enough.
            stamped = self._saga.stamp(claimed, authorize_sent_at=int(self._clock()))
            return self._authorize(stamped, deadline, resumed=True, previous_send=claimed.authorize_sent_at)
        if order.saga_state is S.AUTH_ACTION_REQUIRED:
            return self._after_action(order, deadline)
        raise ConfirmInProgress("this checkout is already being confirmed", order_id=order.order_id)

    def _claim(self, order: Order) -> Order:
        try:
            return self._saga.claim(order, owner=f"confirm:{uuid.uuid4().hex}", lease_seconds=self._lease)
        except ConcurrentUpdate as exc:
            raise ConfirmInProgress("this checkout is being settled", order_id=order.order_id) from exc

    def _after_action(self, order: Order, deadline: Deadline) -> ConfirmResult:
        """The customer is back from the 3-D Secure challenge: read the intent and move on."""
        assert order.authorization_id is not None
        if order.next_attempt_at is not None and order.next_attempt_at <= self._clock():
            # The session expired while the challenge waited: the order is recovery's to cancel now.
            raise SessionNotFound(f"checkout session {order.session_id} has expired")
        claimed = self._claim(order)
        result = self._charges.read_authorization(order.authorization_id, deadline)
        if result.outcome is Outcome.AUTHORIZED:
            return self._record_authorization(claimed, result, deadline)
        if result.outcome is Outcome.DECLINED:
            self._saga.move(claimed, S.DECLINED, reason=f"3-D Secure failed: {_payment_error(result)}"[:500])
            metrics.add_metric(name="PaymentDeclined", unit=MetricUnit.Count, value=1)
            raise PaymentDeclinedError("the payment was declined: authentication failed", order_id=order.order_id)
        if result.outcome is Outcome.NOTHING_HELD:
            # Canceled at the provider (not by us while the session was open): give the stock back, close it.
            compensating = self._saga.move(claimed, S.COMPENSATING, reason="intent canceled during 3-D Secure")
            self._compensator().compensate(
                compensating, deadline, reason="intent canceled before the challenge ended", trust_empty_search=False
            )
            raise SessionClosed("this checkout's payment was canceled; start a new checkout", order_id=order.order_id)
        released = self._saga.release(claimed)
        if result.outcome is Outcome.ACTION_REQUIRED and result.intent is not None:
            return self._action_required(released, result)
        # Still processing, or the read failed: nothing changed; the client may confirm again.
        raise PaymentOutcomeUnknownError(
            "the payment is still being processed; confirm again shortly", order_id=order.order_id
        )

    def _action_required(self, order: Order, result: StepResult) -> ConfirmResult:
        assert result.intent is not None
        metrics.add_metric(name="PaymentActionRequired", unit=MetricUnit.Count, value=1)
        return ConfirmResult(
            order, 202, client_secret=result.intent.client_secret, next_action=result.intent.next_action
        )

    def _authorize(
        self, order: Order, deadline: Deadline, *, resumed: bool, previous_send: int | None = None
    ) -> ConfirmResult:
        result = self._charges.authorize(order, deadline, resumed=resumed)
        if result.outcome is Outcome.AUTHORIZED:
            assert result.intent is not None
            return self._record_authorization(order, result, deadline)
        if result.outcome is Outcome.ACTION_REQUIRED and result.intent is not None:
            session = self._store.get_session(order.session_id)
            expires = session.expires_at_epoch if session is not None else int(self._clock())
            waiting = self._saga.move(
                order,
                S.AUTH_ACTION_REQUIRED,
                reason="the card needs 3-D Secure: waiting for the customer",
                authorization_id=result.intent.id,
                next_attempt_at=expires,
            )
            return self._action_required(waiting, result)
        if result.outcome is Outcome.DECLINED:
            self._saga.move(order, S.DECLINED, reason=f"declined: {result.error}"[:500])
            metrics.add_metric(name="PaymentDeclined", unit=MetricUnit.Count, value=1)
            raise PaymentDeclinedError("the payment was declined", order_id=order.order_id)
        if result.outcome is Outcome.NOT_SENT:
            self._saga.move(order, S.AUTH_FAILED, reason=f"not sent: {result.error}"[:500])
            raise PaymentUnavailable("the payment provider could not be reached; nothing was charged")
        # UNKNOWN (or NOTHING_HELD on an intent canceled meanwhile): leave it for a client retry or recovery.
        known = {"authorization_id": result.intent.id} if result.intent is not None else {}
        if order.saga_state is S.AUTHORIZING:
            self._saga.move(order, S.AUTH_UNKNOWN, reason=f"authorize outcome unknown: {result.error}"[:500], **known)
        else:
            # A resumed order stays AUTH_UNKNOWN; give its lease back so the next retry or recovery may try. A replayed
            # answer proves this send made nothing new: the search lag still runs from the previous send.
            changes: dict[str, Any] = dict(known) if order.authorization_id is None else {}
            if result.replayed:
                changes["authorize_sent_at"] = previous_send
            try:
                if changes:
                    self._saga.stamp(order, **changes)
                else:
                    self._saga.release(order)
            except ConcurrentUpdate:
                logger.warning("lease on an unknown authorization was taken over", extra={"error": result.error})
        metrics.add_metric(name="AuthorizeOutcomeUnknown", unit=MetricUnit.Count, value=1)
        if result.timed_out:
            raise PaymentTimeout(
                "the payment provider did not answer in time; retry to resume this order", order_id=order.order_id
            )
        raise PaymentOutcomeUnknownError(
            "the payment outcome is not known yet; retry to resume this order", order_id=order.order_id
        )

    def _record_authorization(self, order: Order, result: StepResult, deadline: Deadline) -> ConfirmResult:
        assert result.intent is not None
        try:
            capturing = self._saga.move(
                order, S.AUTHORIZED, S.CAPTURING, reason="authorized", authorization_id=result.intent.id
            )
        except (ClientError, BotoCoreError) as exc:
            self._void_unrecorded(order, result, exc, deadline)
            raise OrderNotRecorded(
                "the order could not be recorded; the payment hold is being released", order_id=order.order_id
            ) from exc
        captured = self._charges.capture(capturing, deadline)
        if captured.outcome is Outcome.CAPTURED:
            done = self._saga.move(capturing, S.CAPTURED, reason="captured")
            metrics.add_metric(name="CheckoutConfirmed", unit=MetricUnit.Count, value=1)
            return ConfirmResult(done, 201)
        next_at = int(self._clock()) + self._backoff
        pending = self._saga.move(
            capturing,
            S.CAPTURE_PENDING,
            reason=f"capture {captured.outcome}: {captured.error}"[:500],
            next_attempt_at=next_at,
            key_attempts={**capturing.key_attempts, Step.CAPTURE.value: captured.next_key_attempt or 1},
            last_error=(captured.error or "")[:2000] or None,
        )
        metrics.add_metric(name="CapturePending", unit=MetricUnit.Count, value=1)
        return ConfirmResult(pending, 202)

    def _void_unrecorded(self, order: Order, result: StepResult, cause: Exception, deadline: Deadline) -> None:
        """The hold exists but the order store failed: void at once, and record a failed void."""
        assert result.intent is not None
        logger.error("order write failed after authorize; voiding at once", extra={"error": str(cause)})
        try:
            compensating = self._saga.move(
                order, S.COMPENSATING, reason=f"order write failed: {cause}"[:500], authorization_id=result.intent.id
            )
        except (ClientError, BotoCoreError, ConcurrentUpdate):
            # The store is still failing: void anyway. The order stays AUTHORIZING, so recovery settles it later.
            held = order.model_copy(update={"authorization_id": result.intent.id})
            steps = self._compensator().run_steps(held, deadline, trust_empty_search=False)
            if not steps.ok:
                self._compensator().record(held, steps)
            return
        self._compensator().compensate(
            compensating, deadline, reason="voided after the order write failed", trust_empty_search=False
        )


def _payment_error(result: StepResult) -> str:
    error = result.intent.last_payment_error if result.intent is not None else None
    if isinstance(error, dict):
        return str(error.get("code") or error.get("message") or "declined")
    return result.error or "declined"
