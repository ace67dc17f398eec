"""The compensation worker: compensates CAPTURE_FAILED orders and takes over stale sagas (ARCHITECTURE.md section 4).

- CAPTURE_FAILED, and a stale COMPENSATING: void (or refund) and release → COMPENSATED.
- A stale AUTHORIZING / AUTH_UNKNOWN: learn what the provider holds (search by order, else re-send authorize
  under the order's one key while the provider still knows it, < 23 h), void it, release → COMPENSATED. An empty
  search counts as "nothing held" only once the last authorize send is older than PAYMENT_SEARCH_LAG_SECONDS;
  before that the order stays due.
- AUTH_ACTION_REQUIRED once its session has expired (3-D Secure abandoned): cancel the intent, so a late
  challenge cannot create a hold, release → COMPENSATED.
- A stale AUTHORIZED / CAPTURING: roll forward to CAPTURE_PENDING, due now; the retry worker captures with the
  order's one capture key, so a capture whose answer was lost is replayed, never repeated.
A step that fails → COMPENSATION_FAILED, with a failed-compensation record, a queue message and one alert.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from checkout.charges import Charges, Outcome
from checkout.compensation import CompensationSteps, Compensator
from checkout.deadline import Deadline
from checkout.failed_compensations import OperationType
from checkout.observability import logger
from checkout.orders import Order, OrderStore
from checkout.saga import Saga, SagaState, WorkQueue
from checkout.workers import RunBudget, RunCircuit, RunSummary, drain, settle

S = SagaState
WORKER = "compensation"
COMPENSATED, FAILED, ROLLED_FORWARD, LEFT_DUE = "compensated", "compensation_failed", "rolled_forward", "left_due"
RECOVERED = "recovered"
METRICS = {COMPENSATED: "OrdersCompensated", RECOVERED: "SagasRecovered", FAILED: "CompensationsFailedByWorker"}
UNRECORDED_AUTHORIZE = frozenset({S.AUTHORIZING, S.AUTH_UNKNOWN})
ROLL_FORWARD = frozenset({S.AUTHORIZED, S.CAPTURING})
# Still COMPENSATING after a try: out of time, or its record not complete yet; due again.
_OUTCOME = {S.COMPENSATED: COMPENSATED, S.COMPENSATION_FAILED: FAILED}


@dataclass(frozen=True)
class _Deferred:
    order: Order
    steps: CompensationSteps | None  # None: what the provider holds could not be learnt
    reason: str


class CompensationWorker:
    def __init__(
        self,
        *,
        store: OrderStore,
        saga: Saga,
        charges: Charges,
        compensator: Compensator,
        clock: Callable[[], float],
        stale_saga_seconds: int,
        payment_timeout: float,
        circuit_failure_threshold: int,
        concurrency: int,
        max_recovery_attempts: int = 12,
    ) -> None:
        self._store = store
        self._saga = saga
        self._charges = charges
        self._compensator = compensator
        self._clock = clock
        self._stale = stale_saga_seconds
        self._payment_timeout = payment_timeout
        self._threshold = circuit_failure_threshold
        self._concurrency = concurrency
        self._max_attempts = max_recovery_attempts

    def run(self, deadline: Deadline, *, owner: str) -> RunSummary:
        budget = RunBudget(deadline, payment_timeout=self._payment_timeout, circuit=RunCircuit(self._threshold))
        summary = RunSummary(WORKER, outcomes=(COMPENSATED, FAILED, ROLLED_FORWARD, LEFT_DUE, RECOVERED))
        # Failures caused by provider faults wait for the run's end: if the provider turned out to be down (the
        # circuit opened), the orders are left due for the next run instead of being recorded as failed.
        deferred: list[_Deferred] = []
        deferred_lock = threading.Lock()

        def handle(claimed: Order) -> str | None:
            if claimed.saga_state is not S.CAPTURE_FAILED:
                summary.count(RECOVERED)
                logger.info(
                    "stale saga taken over by recovery",
                    extra={"order_id": claimed.order_id, "saga_state": claimed.saga_state, "since": claimed.updated_at},
                )
            if claimed.saga_state in ROLL_FORWARD:
                self._saga.move(
                    claimed,
                    S.CAPTURE_PENDING,
                    reason=f"recovery: stale {claimed.saga_state}, rolled forward to the capture retry",
                    next_attempt_at=int(self._clock()),
                )
                return ROLLED_FORWARD
            outcome = self._compensate(claimed, budget)
            if not isinstance(outcome, _Deferred):
                return outcome
            with deferred_lock:
                deferred.append(outcome)
            return None

        now = int(self._clock())
        due = itertools.chain(self._store.due(WorkQueue.COMPENSATION, now), self._store.due(WorkQueue.RECOVERY, now))
        drain(due, handle, saga=self._saga, owner=owner, budget=budget, summary=summary, concurrency=self._concurrency)
        outage = budget.circuit.is_open
        for item in deferred:
            settle(functools.partial(self._settle, item, outage=outage), item.order, summary)
        return summary

    def _settle(self, item: _Deferred, *, outage: bool) -> str:
        if outage:
            self._saga.release(item.order)
            return LEFT_DUE
        if item.steps is None:
            return self._unsettled(item.order, item.reason)
        return self._finish(item.order, item.steps, item.reason)

    def _unsettled(self, order: Order, reason: str) -> str:
        """One more run that could not learn what the provider holds: a counter, then a record, never a loop."""
        attempts = order.recovery_attempts + 1
        if attempts < self._max_attempts:
            self._saga.reschedule(order, recovery_attempts=attempts)
            logger.warning(
                "could not learn what the provider holds; left for the next run",
                extra={"order_id": order.order_id, "recovery_attempts": attempts},
            )
            return LEFT_DUE
        # RECOVERY_MAX_ATTEMPTS: a person must look. Both steps stay open in the record (the dlq_processor
        # retries them); the order goes COMPENSATION_FAILED once record, message and alert exist.
        error = f"could not learn what the provider holds after {attempts} recovery runs (RECOVERY_MAX_ATTEMPTS)"
        steps = CompensationSteps(
            failed=[OperationType.VOID_AUTHORIZATION, OperationType.RELEASE_RESERVATION],
            errors=[error],
            key_attempts=dict(order.key_attempts),
            authorization_id=order.authorization_id,
        )
        return self._finish(order, steps, reason)

    def _compensate(self, order: Order, budget: RunBudget) -> str | _Deferred:
        if order.saga_state is S.CAPTURE_FAILED:
            reason = "capture retries exhausted: compensated"
        elif order.saga_state is S.AUTH_ACTION_REQUIRED:
            if order.next_attempt_at is not None and order.next_attempt_at > self._clock():
                self._saga.release(order)  # the session is still open: the customer may still complete it
                return LEFT_DUE
            reason = "recovery: 3-D Secure not completed before the session expired; intent canceled"
        else:
            reason = f"recovery: stale {order.saga_state}, compensated"
        trust_empty = self._charges.empty_search_is_proof(order, self._clock())
        # The steps see what the provider holds; the transition is written against the order as claimed, so
        # an intent id learnt here is recorded with it.
        target, nothing_held = order, False
        if order.saga_state in UNRECORDED_AUTHORIZE and order.authorization_id is None:
            order, settled = self._find_hold(order, budget.deadline, trust_empty=trust_empty)
            if settled is None:
                budget.circuit.record(provider_fault=True)
                return _Deferred(order, None, reason)
            target, nothing_held = settled
        steps = self._compensator.run_steps(
            target, budget.deadline, trust_empty_search=trust_empty, nothing_held=nothing_held
        )
        if not steps.out_of_time:
            budget.circuit.record(provider_fault=steps.provider_fault)
        if not steps.ok and steps.provider_fault:
            return _Deferred(order, steps, reason)
        return self._finish(order, steps, reason)

    def _find_hold(
        self, order: Order, deadline: Deadline, *, trust_empty: bool
    ) -> tuple[Order, tuple[Order, bool] | None]:
        """The order to write against, and the order with the intent its authorize left and whether nothing is held
        (None while unknown).

        The search is read-only, so it goes first. When it cannot tell, authorize is sent again under the same
        key (the decision is in docs/decisions.md): the provider replays what it did with that key, or does it
        now, naming the intent to void. Never after 23 h, when the provider may have forgotten the key; the send
        time is written first, so an empty search is not trusted until the lag has passed since this send too.
        """
        found = self._charges.find_authorization(order, deadline, trust_empty=trust_empty)
        if found.outcome is Outcome.UNKNOWN and found.intent is None:
            now = self._clock()
            if not self._charges.may_resend_authorize(order, now):
                return order, None
            previous = order.authorize_sent_at
            order = self._saga.stamp(order, authorize_sent_at=int(now))
            found = self._charges.authorize(order, deadline, resumed=True)
            if found.replayed:
                # A replayed answer proves this send made nothing new: the search lag still runs from the last one.
                order = self._saga.stamp(order, authorize_sent_at=previous)
        if found.outcome in (Outcome.AUTHORIZED, Outcome.ACTION_REQUIRED) and found.intent is not None:
            return order, (order.model_copy(update={"authorization_id": found.intent.id}), False)
        if found.outcome is Outcome.UNKNOWN and found.intent is not None:
            # processing: the intent is known; cancel it (Stripe refuses while processing, so it stays due).
            return order, (order.model_copy(update={"authorization_id": found.intent.id}), False)
        if found.outcome in (Outcome.NOTHING_HELD, Outcome.DECLINED):
            return order, (order, True)
        return order, None

    def _finish(self, order: Order, steps: CompensationSteps, reason: str) -> str:
        finished = self._compensator.finish(order, steps, reason=reason)
        return _OUTCOME.get(finished.saga_state, LEFT_DUE)
