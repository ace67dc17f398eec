"""The saga: its states, the transitions allowed between them, and the one function that moves an order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from checkout.orders import Order


class SagaState(StrEnum):
    AUTHORIZING = "AUTHORIZING"
    AUTH_UNKNOWN = "AUTH_UNKNOWN"
    AUTH_ACTION_REQUIRED = "AUTH_ACTION_REQUIRED"
    DECLINED = "DECLINED"
    AUTH_FAILED = "AUTH_FAILED"
    AUTHORIZED = "AUTHORIZED"
    CAPTURING = "CAPTURING"
    CAPTURE_PENDING = "CAPTURE_PENDING"
    CAPTURED = "CAPTURED"
    CAPTURE_FAILED = "CAPTURE_FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


class OrderStatus(StrEnum):
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    PAYMENT_PENDING = "payment_pending"
    CONFIRMED = "confirmed"
    DECLINED = "declined"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = SagaState

# ARCHITECTURE.md section 4, row by row. A state may move to itself only where the table's owner
# re-runs its step (a rescheduled capture, a challenge still waiting).
TRANSITIONS: dict[SagaState, frozenset[SagaState]] = {
    S.AUTHORIZING: frozenset(
        {S.AUTHORIZED, S.AUTH_ACTION_REQUIRED, S.DECLINED, S.AUTH_FAILED, S.AUTH_UNKNOWN, S.COMPENSATING}
    ),
    S.AUTH_UNKNOWN: frozenset({S.AUTHORIZED, S.AUTH_ACTION_REQUIRED, S.DECLINED, S.COMPENSATING}),
    S.AUTH_ACTION_REQUIRED: frozenset({S.AUTHORIZED, S.DECLINED, S.AUTH_ACTION_REQUIRED, S.COMPENSATING}),
    S.DECLINED: frozenset(),
    S.AUTH_FAILED: frozenset(),
    S.AUTHORIZED: frozenset({S.CAPTURING, S.CAPTURE_PENDING}),
    S.CAPTURING: frozenset({S.CAPTURED, S.CAPTURE_PENDING}),
    S.CAPTURE_PENDING: frozenset({S.CAPTURED, S.CAPTURE_PENDING, S.CAPTURE_FAILED}),
    S.CAPTURED: frozenset(),
    S.CAPTURE_FAILED: frozenset({S.COMPENSATING}),
    S.COMPENSATING: frozenset({S.COMPENSATED, S.COMPENSATION_FAILED}),
    S.COMPENSATED: frozenset(),
    S.COMPENSATION_FAILED: frozenset({S.COMPENSATED}),
}

STATUS: dict[SagaState, OrderStatus] = {
    S.AUTHORIZING: OrderStatus.PENDING,
    S.AUTH_UNKNOWN: OrderStatus.PENDING,
    S.AUTH_ACTION_REQUIRED: OrderStatus.REQUIRES_ACTION,
    S.DECLINED: OrderStatus.DECLINED,
    S.AUTH_FAILED: OrderStatus.FAILED,
    S.AUTHORIZED: OrderStatus.PENDING,
    S.CAPTURING: OrderStatus.PENDING,
    S.CAPTURE_PENDING: OrderStatus.PAYMENT_PENDING,
    S.CAPTURED: OrderStatus.CONFIRMED,
    S.CAPTURE_FAILED: OrderStatus.CANCELLED,
    S.COMPENSATING: OrderStatus.CANCELLED,
    S.COMPENSATED: OrderStatus.CANCELLED,
    S.COMPENSATION_FAILED: OrderStatus.CANCELLED,
}

FINAL = frozenset({S.DECLINED, S.AUTH_FAILED, S.CAPTURED, S.COMPENSATED})
# States in which the session can take a new order: nothing was held.
REOPENS_SESSION = frozenset({S.DECLINED, S.AUTH_FAILED})
# Non-final states that recovery takes over once untouched for STALE_SAGA_SECONDS.
RECOVERABLE = frozenset({S.AUTHORIZING, S.AUTH_UNKNOWN, S.AUTHORIZED, S.CAPTURING, S.COMPENSATING})


class WorkQueue(StrEnum):
    """Partition values of the sparse due-index: only orders with work due carry one."""

    CAPTURE = "capture"
    COMPENSATION = "compensation"
    RECOVERY = "recovery"


class Step(StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    RELEASE = "release"


def idempotency_key(order_id: str, step: Step, attempt: int = 1) -> str:
    """`{order_id}:{step}`; `:{n}` only once a read-back proved the step did not happen (section 4)."""
    return f"{order_id}:{step}" if attempt <= 1 else f"{order_id}:{step}:{attempt}"


class IllegalTransition(ValueError):
    """The saga does not allow this move; a bug in the caller, never a runtime condition."""


class ConcurrentUpdate(Exception):
    """Another actor moved or claimed the order first; the caller re-reads and stands down."""


@dataclass(frozen=True)
class WorkItem:
    queue: WorkQueue
    due_at: int


class Claimable(Protocol):
    """What a claim needs of an order: an Order, or its entry in the due-index."""

    @property
    def order_id(self) -> str: ...

    @property
    def saga_state(self) -> SagaState: ...

    @property
    def version(self) -> int: ...


class TransitionWriter(Protocol):
    def write_transition(self, before: Order, after: Order, work: WorkItem | None) -> None: ...

    def write_claim(self, before: Claimable, *, owner: str, lease_until: int, now: int) -> Order: ...

    def write_release(self, before: Order, after: Order, work: WorkItem | None) -> None: ...


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Fields a transition may change besides the state itself.
MUTABLE_FIELDS = frozenset(
    {
        "authorization_id",
        "capture_attempts",
        "next_attempt_at",
        "key_attempts",
        "last_error",
        "refund_id",
        "compensation_id",
        "authorize_sent_at",
        "recovery_attempts",
    }
)


class Saga:
    """Moves orders through the states above. Every move is one conditional write on state and version."""

    def __init__(self, store: TransitionWriter, *, stale_saga_seconds: int, clock: Callable[[], float]) -> None:
        self._store = store
        self._stale = stale_saga_seconds
        self._clock = clock

    def work_for(self, order: Order, now: int) -> WorkItem | None:
        state = order.saga_state
        if state is S.CAPTURE_PENDING:
            return WorkItem(WorkQueue.CAPTURE, order.next_attempt_at if order.next_attempt_at is not None else now)
        if state is S.CAPTURE_FAILED:
            return WorkItem(WorkQueue.COMPENSATION, now)
        if state is S.AUTH_ACTION_REQUIRED:
            # The customer has until the session expires to complete the challenge; then recovery cancels.
            return WorkItem(WorkQueue.RECOVERY, order.next_attempt_at if order.next_attempt_at is not None else now)
        if state in RECOVERABLE:
            return WorkItem(WorkQueue.RECOVERY, now + self._stale)
        return None

    def move(self, order: Order, *path: SagaState, reason: str, **changes: Any) -> Order:
        """Move `order` along `path` (one or more states) in one conditional write; history lists each step."""
        if not path:
            raise IllegalTransition("a move needs at least one target state")
        unknown = set(changes) - MUTABLE_FIELDS
        if unknown:
            raise IllegalTransition(f"a transition cannot set {sorted(unknown)}")
        from checkout.orders import HistoryEntry

        now = self._clock()
        at = iso(now)
        entries = []
        current = order.saga_state
        for target in path:
            if target not in TRANSITIONS[current]:
                raise IllegalTransition(f"{order.order_id}: {current} -> {target} is not a saga transition")
            entries.append(HistoryEntry(at=at, from_state=current, to=target, reason=reason))
            current = target
        after = order.model_copy(
            update={
                **changes,
                "saga_state": current,
                "status": STATUS[current],
                "version": order.version + 1,
                "updated_at": at,
                "history": [*order.history, *entries],
                "lease_owner": None,
                "lease_until": None,
            }
        )
        self._store.write_transition(order, after, self.work_for(after, int(now)))
        return after

    def stamp(self, order: Order, **changes: Any) -> Order:
        """Record a fact about the order without moving it (no history entry, so repeats keep the item small):
        one conditional write on state and version, which also gives back any lease. It counts as touching the
        order (`updated_at`)."""
        return self._rewrite(order, changes, touch=True, verb="stamp")

    def reschedule(self, order: Order, **changes: Any) -> Order:
        """Write what a step learnt and give the lease back without moving the order: no history entry.

        For a run that spent no attempt or must wait (section 4: an order item stays small whatever happens).
        """
        return self._rewrite(order, changes, touch=False, verb="reschedule")

    def _rewrite(self, order: Order, changes: dict[str, Any], *, touch: bool, verb: str) -> Order:
        unknown = set(changes) - MUTABLE_FIELDS
        if unknown:
            raise IllegalTransition(f"a {verb} cannot set {sorted(unknown)}")
        now = self._clock()
        update = {**changes, "version": order.version + 1, "lease_owner": None, "lease_until": None}
        if touch:
            update["updated_at"] = iso(now)
        after = order.model_copy(update=update)
        self._store.write_transition(order, after, self.work_for(after, int(now)))
        return after

    def claim(self, order: Claimable, *, owner: str, lease_seconds: int) -> Order:
        """Take a lease on `order` without moving it; fails with ConcurrentUpdate if anyone else holds one.

        Returns the whole order as claimed (the store's answer), so a due-index entry is enough to claim from.
        """
        now = int(self._clock())
        return self._store.write_claim(order, owner=owner, lease_until=now + lease_seconds, now=now)

    def release(self, order: Order) -> Order:
        """Give a lease back without moving the order: its step's outcome is still unknown, let others try."""
        after = order.model_copy(update={"version": order.version + 1, "lease_owner": None, "lease_until": None})
        self._store.write_release(order, after, self.work_for(after, int(self._clock())))
        return after
