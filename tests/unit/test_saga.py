"""The saga's transitions: allowed moves, history, and the conditional write that makes one actor win."""

from __future__ import annotations

import pytest

from checkout.dynamodb import to_item
from checkout.orders import HistoryEntry, LineItem, Order
from checkout.runtime import Runtime
from checkout.saga import (
    FINAL,
    STATUS,
    TRANSITIONS,
    ConcurrentUpdate,
    IllegalTransition,
    OrderStatus,
    SagaState,
    Step,
    WorkQueue,
    idempotency_key,
)
from tests.conftest import Clock

S = SagaState


def new_order(runtime: Runtime, clock: Clock, order_id: str = "ord_1") -> Order:
    now = clock()
    order = Order(
        order_id=order_id,
        session_id="cs_1",
        customer_id="cus_1",
        currency="usd",
        amount_total=1000,
        items=[LineItem(sku="sku_1", quantity=1, unit_amount=1000)],
        payment_method="pm_card_visa",
        reservation_id="res_1",
        saga_state=S.AUTHORIZING,
        status=STATUS[S.AUTHORIZING],
        version=1,
        history=[HistoryEntry(at="t0", from_state=None, to=S.AUTHORIZING, reason="recorded")],
        created_at="t0",
        created_at_epoch=int(now),
        updated_at="t0",
    )
    runtime.dynamodb.put_item(
        TableName=runtime.settings.orders_table_name,
        Item={"pk": {"S": f"ORDER#{order_id}"}, **to_item(order)},
    )
    return order


def test_idempotency_keys_derive_from_order_and_step_never_the_attempt() -> None:
    assert idempotency_key("ord_1", Step.CAPTURE) == "ord_1:capture"
    assert idempotency_key("ord_1", Step.CAPTURE, 1) == "ord_1:capture"
    assert idempotency_key("ord_1", Step.VOID, 2) == "ord_1:void:2"
    assert idempotency_key("ord_1", Step.RELEASE) == "ord_1:release"


def test_final_states_have_no_way_out_and_every_state_has_a_status() -> None:
    for state in FINAL:
        assert TRANSITIONS[state] == frozenset()
    assert set(STATUS) == set(SagaState)
    assert STATUS[S.CAPTURE_PENDING] is OrderStatus.PAYMENT_PENDING
    assert STATUS[S.COMPENSATION_FAILED] is OrderStatus.CANCELLED


def test_a_move_through_several_states_lists_each_step_in_history(runtime: Runtime, clock: Clock) -> None:
    order = new_order(runtime, clock)

    moved = runtime.saga.move(order, S.AUTHORIZED, S.CAPTURING, reason="authorized", authorization_id="pi_1")

    stored = runtime.store.get_order("ord_1")
    assert stored == moved
    assert stored.saga_state is S.CAPTURING
    assert stored.status is OrderStatus.PENDING
    assert stored.version == 2
    assert stored.authorization_id == "pi_1"
    assert [(h.from_state, h.to) for h in stored.history] == [
        (None, S.AUTHORIZING),
        (S.AUTHORIZING, S.AUTHORIZED),
        (S.AUTHORIZED, S.CAPTURING),
    ]


def test_an_illegal_transition_is_refused_before_anything_is_written(runtime: Runtime, clock: Clock) -> None:
    order = new_order(runtime, clock)

    with pytest.raises(IllegalTransition):
        runtime.saga.move(order, S.CAPTURED, reason="skipping the authorization")
    with pytest.raises(IllegalTransition):
        runtime.saga.move(order, S.AUTHORIZED, reason="x", saga_state=S.CAPTURED)

    assert runtime.store.get_order("ord_1") == order


def test_the_second_of_two_actors_with_the_same_version_loses(runtime: Runtime, clock: Clock) -> None:
    order = new_order(runtime, clock)
    runtime.saga.move(order, S.AUTH_UNKNOWN, reason="first actor")

    with pytest.raises(ConcurrentUpdate):
        runtime.saga.move(order, S.DECLINED, reason="second actor, stale read")

    assert runtime.store.get_order("ord_1").saga_state is S.AUTH_UNKNOWN


def test_a_lease_keeps_other_actors_out_until_it_expires(runtime: Runtime, clock: Clock) -> None:
    order = runtime.saga.move(new_order(runtime, clock), S.AUTH_UNKNOWN, reason="timeout")
    claimed = runtime.saga.claim(order, owner="worker-a", lease_seconds=30)

    # Another actor holding a fresh read of the leased order cannot claim it
    with pytest.raises(ConcurrentUpdate):
        runtime.saga.claim(runtime.store.get_order("ord_1"), owner="worker-b", lease_seconds=30)

    clock.advance(31)
    reclaimed = runtime.saga.claim(runtime.store.get_order("ord_1"), owner="worker-b", lease_seconds=30)
    assert reclaimed.lease_owner == "worker-b"
    assert claimed.version < reclaimed.version


def test_work_queue_follows_the_state(runtime: Runtime, clock: Clock) -> None:
    order = new_order(runtime, clock)
    now = int(clock())

    assert runtime.saga.work_for(order, now).queue is WorkQueue.RECOVERY
    assert runtime.saga.work_for(order, now).due_at == now + runtime.settings.stale_saga_seconds
    capturing = runtime.saga.move(order, S.AUTHORIZED, S.CAPTURING, reason="ok", authorization_id="pi_1")
    pending = runtime.saga.move(capturing, S.CAPTURE_PENDING, reason="capture failed", next_attempt_at=now + 60)

    assert [o.order_id for o in runtime.store.due(WorkQueue.CAPTURE, now + 59)] == []
    assert [o.order_id for o in runtime.store.due(WorkQueue.CAPTURE, now + 60)] == ["ord_1"]
    captured = runtime.saga.move(pending, S.CAPTURED, reason="captured")
    assert runtime.saga.work_for(captured, now) is None
    assert list(runtime.store.due(WorkQueue.CAPTURE, now + 3600)) == []
