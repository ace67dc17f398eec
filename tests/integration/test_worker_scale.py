"""A backlog among a busy table: one capture_retry run reads exactly the due orders, by Query, and drains them."""

from __future__ import annotations

import time

from checkout.saga import SagaState
from tests.backlog import CountingDynamoDB, an_order, due_captures, put_all, stored_states
from tests.integration.test_workers import run_worker

S = SagaState


def test_one_run_reads_and_captures_exactly_the_due_orders(make_runtime, stack, stripe, clock) -> None:
    # Given 1,000 due captures (each a real hold at the provider) among 20,000 orders with no capture due
    now = clock()
    future = int(now) + 3600
    due = due_captures(stripe.url, 1000, now=now)
    later = [(an_order(S.CAPTURE_PENDING, authorization_id="pi_x", now=now), "capture", future) for _ in range(8000)]
    recovery = [
        (an_order(S.CAPTURING, authorization_id="pi_y", now=now), "recovery", int(now) - 5) for _ in range(6000)
    ]
    final = [(an_order(S.CAPTURED, authorization_id="pi_z", now=now), None, None) for _ in range(6000)]
    table = stack.physical["OrdersTable"]["Ref"]
    put_all(table, due + later + recovery + final)
    counting = CountingDynamoDB(make_runtime().dynamodb)
    make_runtime(dynamodb=counting)

    # When one capture_retry run goes
    started = time.monotonic()
    summary = run_worker("capture_retry")
    elapsed = time.monotonic() - started

    # Then it read exactly the due orders, by Query, never a Scan, and captured every one within its budget
    assert counting.calls["scan"] == 0
    assert counting.items_read == 1000
    assert summary["due"] == 1000
    assert summary["captured"] == 1000
    assert summary["stopped_early"] is None
    assert stripe.count("captured") == 1000
    assert stored_states(table) == {"CAPTURED": 7000, "CAPTURE_PENDING": 8000, "CAPTURING": 6000}
    print(f"drained 1000 due orders among 21000 in {elapsed:.1f}s")
