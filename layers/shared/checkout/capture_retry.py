"""The capture-retry worker: captures the CAPTURE_PENDING orders that are due, with the order's one capture key."""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from checkout.charges import Charges, Outcome, StepResult
from checkout.deadline import Deadline
from checkout.observability import logger
from checkout.orders import Order, OrderStore
from checkout.saga import Saga, SagaState, Step, WorkQueue
from checkout.workers import RunBudget, RunCircuit, RunSummary, drain, settle

S = SagaState
WORKER = "capture_retry"
CAPTURED, RESCHEDULED, EXHAUSTED = "captured", "rescheduled", "exhausted"
METRICS = {
    CAPTURED: "CaptureRetryCaptured",
    RESCHEDULED: "CaptureRetryRescheduled",
    EXHAUSTED: "CaptureRetriesExhausted",
}
# A retry waits between (1 - JITTER) and 1 times its backoff, so orders that failed together spread out.
JITTER = 0.2


def backoff_seconds(attempts: int, *, base: int, cap: int, rand: Callable[[], float] = random.random) -> int:
    """`min(base * 2^attempts, cap)`, less up to JITTER of it."""
    delay = min(base * 2**attempts, cap)
    return max(1, int(delay * (1 - JITTER * rand())))


@dataclass(frozen=True)
class _Failed:
    order: Order
    result: StepResult


class CaptureRetryWorker:
    def __init__(
        self,
        *,
        store: OrderStore,
        saga: Saga,
        charges: Charges,
        clock: Callable[[], float],
        max_retries: int,
        backoff_base_seconds: int,
        backoff_max_seconds: int,
        payment_timeout: float,
        circuit_failure_threshold: int,
        concurrency: int,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._saga = saga
        self._charges = charges
        self._clock = clock
        self._max_retries = max_retries
        self._base = backoff_base_seconds
        self._cap = backoff_max_seconds
        self._payment_timeout = payment_timeout
        self._threshold = circuit_failure_threshold
        self._concurrency = concurrency
        self._rand = rand

    def run(self, deadline: Deadline, *, owner: str) -> RunSummary:
        """One scheduled run: every due order is captured, rescheduled or exhausted, or left due for the next run."""
        budget = RunBudget(deadline, payment_timeout=self._payment_timeout, circuit=RunCircuit(self._threshold))
        summary = RunSummary(WORKER, outcomes=(CAPTURED, RESCHEDULED, EXHAUSTED))
        # Provider failures are settled once the run knows whether the provider was down: an outage (the circuit
        # opened) reschedules them without spending an attempt, so it never exhausts an order by itself.
        failed: list[_Failed] = []
        failed_lock = threading.Lock()

        def capture(claimed: Order) -> str | None:
            result = self._charges.capture(claimed, budget.deadline)
            budget.circuit.record(provider_fault=result.provider_fault and result.outcome is not Outcome.CAPTURED)
            if result.outcome is Outcome.CAPTURED:
                reason = f"captured by the retry worker (attempt {claimed.capture_attempts + 1})"
                self._saga.move(claimed, S.CAPTURED, reason=reason)
                return CAPTURED
            if result.outcome is Outcome.CANNOT_CAPTURE:
                # The intent can never be captured (canceled, expired): compensation releases what is left.
                self._saga.move(claimed, S.CAPTURE_FAILED, reason=f"cannot capture: {result.error}"[:500])
                return EXHAUSTED
            with failed_lock:
                failed.append(_Failed(claimed, result))
            return None

        drain(
            self._store.due(WorkQueue.CAPTURE, int(self._clock())),
            capture,
            saga=self._saga,
            owner=owner,
            budget=budget,
            summary=summary,
            concurrency=self._concurrency,
        )
        outage = budget.circuit.is_open
        for failure in failed:
            settle(functools.partial(self._settle_failure, failure, outage=outage), failure.order, summary)
        return summary

    def _settle_failure(self, failure: _Failed, *, outage: bool) -> str:
        order, result = failure.order, failure.result
        keys = {**order.key_attempts, Step.CAPTURE.value: result.next_key_attempt or order.key_attempt(Step.CAPTURE)}
        error = (result.error or str(result.outcome))[:2000]
        if outage or not result.provider_fault:
            # No attempt spent: the provider was down for everyone (the circuit opened), or the run ran out of
            # time before the capture went out. Rescheduled without a history entry, so the item stays small.
            why = "provider outage" if outage else "out of time"
            next_at = int(self._clock()) + (
                backoff_seconds(order.capture_attempts, base=self._base, cap=self._cap, rand=self._rand)
                if outage
                else 0
            )
            self._saga.reschedule(
                order, next_attempt_at=next_at, key_attempts=keys, last_error=f"{why}: {error}"[:2000]
            )
            return RESCHEDULED
        spent = order.capture_attempts + 1
        if spent >= self._max_retries:
            self._saga.move(
                order,
                S.CAPTURE_FAILED,
                reason=f"capture retries exhausted after {spent}: {error}"[:500],
                capture_attempts=spent,
                key_attempts=keys,
                last_error=error,
            )
            logger.warning(
                "capture retries exhausted; the order goes to compensation", extra={"order_id": order.order_id}
            )
            return EXHAUSTED
        next_at = int(self._clock()) + backoff_seconds(spent, base=self._base, cap=self._cap, rand=self._rand)
        why = f"attempt {spent} of {self._max_retries} failed"
        self._saga.move(
            order,
            S.CAPTURE_PENDING,
            reason=f"{why}: {error}"[:500],
            capture_attempts=spent,
            next_attempt_at=next_at,
            key_attempts=keys,
            last_error=error,
        )
        return RESCHEDULED
