"""What every scheduled worker run shares: the run summary, the time budget, the circuit breaker, the pause switch
and the bounded-concurrency loop over the orders a due-index Query finds."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from checkout.config import WRITE_MARGIN_SECONDS
from checkout.deadline import Deadline, LambdaContextLike
from checkout.observability import MetricUnit, logger, metrics
from checkout.orders import Order, OrderStore
from checkout.saga import Claimable, ConcurrentUpdate, Saga, WorkQueue

# Provider calls in flight at once in one run: enough to drain a backlog at 10x a serial loop with a
# 200 ms provider, few enough to stay far below Stripe's rate limit (100 requests/s in live mode).
DEFAULT_CONCURRENCY = 16
# The value of the pause parameter that pauses nothing (SSM refuses empty values).
NOTHING_PAUSED = "none"


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class RunCircuit:
    """Opens after `threshold` consecutive provider failures within one run; a success closes the streak.

    Hand-written rather than Powertools' circuit breaker on purpose: that one keeps its state beyond the
    run (a persistence table, a recovery timeout, half-open probes) and counts exceptions. ARCHITECTURE.md
    section 4 wants a breaker per run, counting provider faults that our step results report as values,
    with the schedule itself as the recovery timeout: the next run starts closed and resumes.
    """

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._streak = 0
        self._open = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def state(self) -> Circuit:
        return Circuit.OPEN if self._open else Circuit.CLOSED

    def record(self, *, provider_fault: bool) -> None:
        with self._lock:
            if not provider_fault:
                self._streak = 0
                return
            self._streak += 1
            if self._streak >= self._threshold and not self._open:
                self._open = True
                logger.warning("provider keeps failing: circuit open, the run stops taking work")


@dataclass
class RunSummary:
    """What one worker run did; returned by the handler, logged, and turned into metrics."""

    worker: str
    outcomes: tuple[str, ...] = ()
    due: int = 0
    circuit: Circuit = Circuit.CLOSED
    stopped_early: str | None = None
    paused: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.counts = {outcome: 0 for outcome in (*self.outcomes, "skipped", "errors")} | self.counts

    def count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
        return {
            "worker": self.worker,
            "paused": self.paused,
            "due": self.due,
            **counts,
            "circuit": self.circuit.value,
            "stopped_early": self.stopped_early,
        }


def emit(summary: RunSummary, metric_names: dict[str, str]) -> None:
    """Log the summary and add one metric per counted outcome (in the handler's thread: Metrics is not thread-safe)."""
    for outcome, name in metric_names.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=summary.counts.get(outcome, 0))
    if not summary.paused:
        # Orders left for a later run after an AWS error (throttled, refused, an item too large): the alarm
        # WorkerErrors pages when it persists, whatever the cause.
        metrics.add_metric(name="WorkerErrors", unit=MetricUnit.Count, value=summary.counts.get("errors", 0))
    if summary.circuit is Circuit.OPEN:
        metrics.add_metric(name="WorkerCircuitOpened", unit=MetricUnit.Count, value=1)
    logger.info(f"{summary.worker} run finished", extra={"summary": summary.as_dict()})


class RunBudget:
    """Whether the run may take one more order: time for one payment call plus writing its outcome, circuit closed."""

    def __init__(self, deadline: Deadline, *, payment_timeout: float, circuit: RunCircuit) -> None:
        self.deadline = deadline
        self._needed = payment_timeout + WRITE_MARGIN_SECONDS
        self.circuit = circuit

    def stop_reason(self) -> str | None:
        if self.circuit.is_open:
            return "circuit_open"
        if not self.deadline.has_time_for(self._needed):
            return "out_of_time"
        return None

    def lease_seconds(self) -> int:
        """A lease ends with the invocation, so it never outlasts its function's Timeout."""
        return max(1, math.ceil(self.deadline.remaining()))


def drain(
    orders: Iterable[Claimable],
    task: Callable[[Order], str | None],
    *,
    saga: Saga,
    owner: str,
    budget: RunBudget,
    summary: RunSummary,
    concurrency: int,
) -> None:
    """Claim each order and run `task` on the claimed order, at most `concurrency` at once, counting the outcome
    it returns (None: settled later); stop taking orders once the budget says so. An order another actor holds
    or moved is skipped.

    Orders are read lazily, so a run that stops early reads no further page of the index.
    """

    def claim_then(order: Claimable) -> str | None:
        if budget.circuit.is_open:
            return "skipped"
        try:
            claimed = saga.claim(order, owner=owner, lease_seconds=budget.lease_seconds())
        except ConcurrentUpdate:
            return "skipped"  # another run has it, or it moved since the index was read
        return task(claimed)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=summary.worker) as pool:
        in_flight: set[Future[None]] = set()
        for order in orders:
            if len(in_flight) >= concurrency:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                _collect(done)
            reason = budget.stop_reason()
            if reason is not None:
                summary.stopped_early = reason
                break
            summary.due += 1
            in_flight.add(pool.submit(settle, functools.partial(claim_then, order), order, summary))
        _collect(wait(in_flight).done)
    summary.circuit = budget.circuit.state


def settle(step: Callable[[], str | None], order: Claimable, summary: RunSummary) -> None:
    """Run one order's step and count the outcome it names. An AWS error leaves the order leased, so it is due
    again once the lease ends; losing the order to another actor (its lease ran out) is that actor's business."""
    try:
        outcome = step()
    except ConcurrentUpdate:
        logger.warning("order was taken over by another actor; left to it", extra={"order_id": order.order_id})
        summary.count("skipped")
    except (ClientError, BotoCoreError):
        logger.exception("order left for a later run after an AWS error", extra={"order_id": order.order_id})
        summary.count("errors")
    else:
        if outcome is not None:
            summary.count(outcome)


def _collect(done: Iterable[Future[None]]) -> None:
    for future in done:
        # A task handles every outcome it can judge; anything else is a bug and fails the invocation loudly.
        future.result()


class PauseSwitch:
    """The run-time rollback switch: an SSM parameter listing paused workers (`capture_retry,compensation`) or `none`.

    Read through Powertools Parameters and cached for `max_age` seconds, so pausing takes effect within a minute
    without a redeploy. No parameter configured means never paused.
    """

    def __init__(self, parameter_name: str | None, *, fetch: Callable[[str], str] | None = None, max_age: int = 60):
        self._name = parameter_name
        self._fetch = fetch
        self._max_age = max_age

    def paused(self, worker: str) -> bool:
        if not self._name:
            return False
        try:
            value = self._fetch(self._name) if self._fetch else self._from_ssm(self._name)
        except Exception:
            # A worker that does not run leaves customers' money held: an unreadable switch means "run".
            logger.exception("could not read the pause switch; running", extra={"parameter": self._name})
            return False
        paused = {part.strip() for part in value.replace("\n", ",").split(",") if part.strip()}
        return worker in paused or "all" in paused

    def _from_ssm(self, name: str) -> str:
        from aws_lambda_powertools.utilities import parameters

        return str(parameters.get_parameter(name, max_age=self._max_age))


class Worker(Protocol):
    def run(self, deadline: Deadline, *, owner: str) -> RunSummary: ...


# A due_at beyond any order's (the year 2100): the due-index Query then starts at each partition's first entry.
_ANY_TIME = 4_102_444_800


def oldest_overdue_seconds(store: OrderStore, now: float) -> float:
    """How long the most overdue order has waited past its due time, across every work queue (0: none overdue).

    The first entry of each queue's due-index partitions (OrderStore.due merges the shards by due_at, reading
    one item per partition). Every non-final order but COMPENSATION_FAILED (which the queue and its record
    own) is on that index, and a claim moves due_at to the lease's end, so an order no actor moves - a worker
    paused, failing, or never invoked - shows here however it got stuck.
    """
    overdue = 0.0
    for queue in WorkQueue:
        first = next(iter(store.due(queue, _ANY_TIME, page_size=1)), None)
        if first is not None:
            overdue = max(overdue, now - first.due_at)
    return overdue


def emit_backlog(store: OrderStore, now: float) -> None:
    """The OldestOrderOverdueSeconds metric (alarm: OldestOrderOverdueAlarm); an AWS error only skips it."""
    try:
        seconds = oldest_overdue_seconds(store, now)
    except (ClientError, BotoCoreError):
        logger.exception("could not read the due-index for the backlog metric")
        return
    metrics.add_metric(name="OldestOrderOverdueSeconds", unit=MetricUnit.Seconds, value=seconds)


def run_scheduled(
    name: str,
    worker: Callable[[], Worker],
    *,
    switch: PauseSwitch,
    metric_names: dict[str, str],
    context: LambdaContextLike,
    request_id: str,
    backlog: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """A scheduled invocation of a worker: honour the pause switch, run, log and emit the summary, return it.

    `backlog` emits the oldest-overdue metric, paused or not: a paused worker is exactly when orders pile up.
    """
    if backlog is not None:
        backlog()
    if switch.paused(name):
        logger.warning(f"{name} is paused by its switch; nothing done", extra={"worker": name})
        summary = RunSummary(name, paused=True)
    else:
        summary = worker().run(Deadline.from_context(context), owner=f"{name}:{request_id}")
    emit(summary, metric_names if not summary.paused else {})
    return summary.as_dict()
