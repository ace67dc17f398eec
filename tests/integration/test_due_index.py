"""The sharded due-index: work spread over shards, every shard read, oldest first, and a deploy mid-flight (orders
written unsharded by the release before) strands no order."""

from __future__ import annotations

from collections import Counter

import boto3

from checkout.orders import DUE_INDEX
from checkout.runtime import Runtime
from checkout.saga import SagaState, WorkQueue
from tests.backlog import an_order, due_captures, put_all, stored_states
from tests.conftest import Clock
from tests.integration.test_confirm import Api, confirm, open_session
from tests.integration.test_workers import run_worker
from tests.invariants import assert_money_invariants, orders

S = SagaState


def test_orders_in_flight_are_spread_over_every_shard_and_a_run_finds_them_all(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given 40 checkouts whose capture failed, with the due-index spread over 4 shards
    make_runtime(settings={"DUE_INDEX_SHARDS": 4})
    for n in range(40):
        session = open_session(api, f"cus_{n}")
        stripe.inject("capture", status=500, times=1)
        assert confirm(api, session["session_id"], f"cus_{n}").status == 202

    # Then their work sits in the capture queue's shards, never in one partition
    partitions = Counter(o["work_queue"] for o in orders(stack))
    assert set(partitions) == {"capture#00", "capture#01", "capture#02", "capture#03"}
    assert max(partitions.values()) < 40

    # When the retry worker runs once they are due
    clock.advance(61)
    summary = run_worker("capture_retry")

    # Then one run read every shard and captured every order
    assert summary["due"] == 40
    assert summary["captured"] == 40
    assert stored_states(stack.physical["OrdersTable"]["Ref"]) == {"CAPTURED": 40}
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_due_orders_come_oldest_first_across_shards(runtime: Runtime, stack, clock: Clock) -> None:
    # Given orders due at different times, in different shards
    now = int(clock())
    rows = [(an_order(S.CAPTURE_PENDING, authorization_id="pi_x", now=now), "capture", now - n) for n in range(30)]
    put_all(stack.physical["OrdersTable"]["Ref"], rows)

    # When the due captures are read
    due = list(runtime.store.due(WorkQueue.CAPTURE, now))

    # Then every one comes, oldest first
    assert [d.due_at for d in due] == sorted(n for _, _, n in rows if n is not None)
    assert {d.order_id for d in due} == {o.order_id for o, _, _ in rows}


def test_orders_written_before_sharding_are_still_worked_and_move_to_a_shard(
    runtime: Runtime, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a deploy mid-flight: due captures and stale sagas the previous release wrote unsharded, beside
    # orders the new release wrote to shards
    now = clock()
    table = stack.physical["OrdersTable"]["Ref"]
    put_all(table, due_captures(stripe.url, 5, now=now), shards=None)
    put_all(table, due_captures(stripe.url, 5, now=now))
    stale = [(an_order(S.CAPTURING, authorization_id="pi_y", now=now), "recovery", int(now) - 5) for _ in range(5)]
    put_all(table, stale, shards=None)

    # When both workers run
    captured = run_worker("capture_retry")
    recovered = run_worker("compensation")

    # Then every order was found: the captures captured, the stale sagas rolled forward to a sharded capture queue
    assert captured["captured"] == 10
    assert recovered["rolled_forward"] == 5
    items = orders(stack)
    assert Counter(o["saga_state"] for o in items) == {"CAPTURED": 10, "CAPTURE_PENDING": 5}
    moved = [o["work_queue"] for o in items if "work_queue" in o]
    assert len(moved) == 5
    assert all(q.startswith("capture#") for q in moved)
    assert_money_invariants(stack, stripe, warehouse, converged=False)


def test_the_index_the_workers_read_holds_only_what_a_claim_needs(runtime: Runtime, stack, clock: Clock) -> None:
    # Given one order with work due
    now = int(clock())
    put_all(stack.physical["OrdersTable"]["Ref"], [(an_order(S.CAPTURING, now=now), "recovery", now - 1)])

    # When the index is read as the workers read it
    page = boto3.client("dynamodb").query(
        TableName=stack.physical["OrdersTable"]["Ref"],
        IndexName=DUE_INDEX,
        KeyConditionExpression="work_queue = :q AND due_at <= :now",
        ExpressionAttributeValues={":q": {"S": next(iter(orders(stack)))["work_queue"]}, ":now": {"N": str(now)}},
    )

    # Then each entry carries the keys, the state and the version, and nothing of the order's body
    [item] = page["Items"]
    assert set(item) == {"pk", "work_queue", "due_at", "saga_state", "version"}
    # And a worker still claims it whole
    [due] = list(runtime.store.due(WorkQueue.RECOVERY, now))
    claimed = runtime.saga.claim(due, owner="compensation:test", lease_seconds=30)
    assert claimed.amount_total == 1000
    assert claimed.lease_owner == "compensation:test"
