"""Order writes whose answer was lost: DynamoDB applied the write, botocore's retry re-sent it and the re-send
failed its own condition. Each write must recognise itself (ARCHITECTURE.md section 4) instead of answering
5xx after the customer was charged, voiding a recorded order, or leaving an order leased for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from checkout.runtime import Runtime
from checkout.saga import ConcurrentUpdate, SagaState
from tests.backlog import an_order, put_all
from tests.conftest import Clock, unused_port
from tests.integration.test_confirm import Api, confirm, open_session, order_of, path_of
from tests.integration.test_workers import SEARCH_LAG, STALE, run_worker
from tests.invariants import assert_money_invariants, orders
from tests.lost_answers import LoseAnswers

S = SagaState


def _is_claim(body: dict[str, Any]) -> bool:
    return "lease_owner = :owner" in body.get("UpdateExpression", "")


def _is_release(body: dict[str, Any]) -> bool:
    expression = body.get("UpdateExpression", "")
    return expression.startswith("SET #version = :version") and "REMOVE lease_owner, lease_until" in expression


def _is_transition(body: dict[str, Any]) -> bool:
    return ":state" in body.get("ExpressionAttributeValues", {})


def _leaves_due(body: dict[str, Any]) -> bool:
    """The write that gives a lease back without moving the order: a release, or a reschedule that records what the
    run learnt (a counter) in the same state, with no history entry."""
    values = body.get("ExpressionAttributeValues", {})
    return _is_release(body) or (_is_transition(body) and values.get(":state") == values.get(":expected_state"))


def test_confirm_whose_order_create_answer_was_lost_confirms_and_charges_once(
    runtime: Runtime, api: Api, stack, stripe, warehouse
) -> None:
    # Given an open session, and a DynamoDB whose answer to the order-create transaction is lost once
    session = open_session(api)

    # When the customer confirms
    with LoseAnswers(runtime.dynamodb, "TransactWriteItems") as lost:
        response = confirm(api, session["session_id"])

    # Then the retried create recognised its own order: the checkout is confirmed and charged once
    assert len(lost.lost) == 1
    assert response.status == 201, response.body
    assert response.body["status"] == "confirmed"
    order = order_of(api, response.body["order_id"])
    assert path_of(order) == ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]
    assert len(orders(stack)) == 1
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    assert stripe.count("canceled") == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True)


@pytest.mark.parametrize(
    ("case", "lose", "status", "path"),
    [
        ("authorized", 1, 201, ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]),
        ("captured", 2, 201, ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]),
        ("capture_pending", 2, 202, ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURE_PENDING"]),
        ("declined", 1, 402, ["AUTHORIZING", "DECLINED"]),
        ("auth_failed", 1, 503, ["AUTHORIZING", "AUTH_FAILED"]),
        ("auth_unknown", 1, 502, ["AUTHORIZING", "AUTH_UNKNOWN"]),
    ],
)
def test_confirm_whose_transition_answer_was_lost_answers_as_if_it_was_not(
    make_runtime: Callable[..., Runtime],
    runtime: Runtime,
    api: Api,
    stack,
    stripe,
    warehouse,
    case: str,
    lose: int,
    status: int,
    path: list[str],
) -> None:
    # Given a confirm heading for `path`, and the answer to its `lose`-th transition write lost once
    method = "pm_card_chargeDeclined" if case == "declined" else "pm_card_visa"
    session = open_session(api, payment_method=method)
    if case == "capture_pending":
        stripe.inject("capture", status=500, times=1)
    if case == "auth_unknown":
        stripe.inject("authorize", status=500, times=1)
    if case == "auth_failed":
        make_runtime(settings={"PAYMENT_API_BASE_URL": f"http://127.0.0.1:{unused_port()}"})

    # When the customer confirms
    with LoseAnswers(runtime.dynamodb, "UpdateItem", lose={lose}, when=_is_transition) as lost:
        response = confirm(api, session["session_id"])

    # Then the answer and the stored order are the ones a confirm without the lost answer gives
    assert len(lost.lost) == 1
    assert response.status == status, response.body
    [order] = orders(stack)
    assert path_of(order) == path
    assert "lease_owner" not in order
    assert stripe.count("canceled") == 0
    assert stripe.count("captured") == (1 if status == 201 else 0)
    assert_money_invariants(stack, stripe, warehouse, converged=status in (201, 402, 503))


def test_retry_worker_whose_claim_answer_was_lost_still_captures_the_order(
    runtime: Runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a capture that failed in the confirm and is now due
    session = open_session(api)
    stripe.inject("capture", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 202
    clock.advance(61)

    # When the retry worker runs and the answer to its claim is lost
    with LoseAnswers(runtime.dynamodb, "UpdateItem", when=_is_claim) as lost:
        summary = run_worker("capture_retry")

    # Then the run recognised its own lease and captured the order, once
    assert len(lost.lost) == 1
    assert summary["captured"] == 1
    assert summary["skipped"] == 0
    [order] = orders(stack)
    assert order["saga_state"] == "CAPTURED"
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_confirm_resuming_with_a_lost_claim_answer_settles_the_order(
    runtime: Runtime, api: Api, stack, stripe, warehouse
) -> None:
    # Given an order whose authorize answer was lost (AUTH_UNKNOWN), the hold made at the provider
    session = open_session(api)
    stripe.inject("authorize", lose_response=True, times=1)
    stripe.inject("search", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 502

    # When the client retries and the answer to the confirm's claim on the order is lost
    with LoseAnswers(runtime.dynamodb, "UpdateItem", when=_is_claim) as lost:
        retried = confirm(api, session["session_id"])

    # Then the confirm resumes the order under its lease rather than answering 409
    assert len(lost.lost) == 1
    assert retried.status == 201, retried.body
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_recovery_whose_release_answer_was_lost_leaves_the_order_due_for_the_next_run(
    runtime: Runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a stale AUTH_UNKNOWN order, and a provider that can tell nothing (search and authorize replay 500)
    session = open_session(api)
    stripe.inject("authorize", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 502
    stripe.inject("search", status=500, times=1)
    clock.advance(STALE + 1)

    # When recovery runs and the answer to its lease release is lost
    with LoseAnswers(runtime.dynamodb, "UpdateItem", when=_leaves_due) as lost:
        summary = run_worker("compensation")

    # Then the run reports the order left due (not taken over by someone else), and the order holds no lease
    assert len(lost.lost) == 1
    assert summary["left_due"] == 1
    assert summary["skipped"] == 0
    [order] = orders(stack)
    assert order["saga_state"] == "AUTH_UNKNOWN"
    assert "lease_owner" not in order
    # And the next run, with the provider answering and the search trustworthy (PAYMENT_SEARCH_LAG_SECONDS), settles it
    clock.advance(SEARCH_LAG)
    assert run_worker("compensation")["compensated"] == 1
    assert orders(stack)[0]["saga_state"] == "COMPENSATED"
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_a_write_that_another_actor_beat_is_still_a_concurrent_update(
    runtime: Runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a due capture, claimed by another run first
    session = open_session(api)
    stripe.inject("capture", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 202
    clock.advance(61)
    order = runtime.store.get_order(orders(stack)[0]["order_id"])
    assert order is not None
    runtime.saga.claim(order, owner="capture_retry:another-run", lease_seconds=60)

    # When this run reads the order (as the index showed it before that claim) and tries to claim it
    with pytest.raises(ConcurrentUpdate):
        runtime.saga.claim(order, owner="capture_retry:this-run", lease_seconds=60)

    # Then the other run's lease stands
    assert orders(stack)[0]["lease_owner"] == "capture_retry:another-run"


def test_confirm_whose_every_retry_of_the_authorized_write_lost_its_answer_still_confirms(
    runtime: Runtime, api: Api, stack, stripe, warehouse
) -> None:
    # Given a confirm whose write recording the authorization is applied, but every answer botocore waits for
    # (first send and both retries) is lost, so botocore gives up with a read timeout
    session = open_session(api)

    with LoseAnswers(runtime.dynamodb, "UpdateItem", when=_is_transition, sends=3) as lost:
        response = confirm(api, session["session_id"])

    # Then the confirm reads its order back, finds its own write and goes on: no 503 order_not_recorded, no
    # void of a recorded order, one capture
    assert len(lost.lost) == 1
    assert response.status == 201, response.body
    [order] = orders(stack)
    assert path_of(order) == ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]
    assert stripe.count("canceled") == 0
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_confirm_whose_order_create_answers_were_all_lost_still_confirms(
    runtime: Runtime, api: Api, stack, stripe, warehouse
) -> None:
    session = open_session(api)

    with LoseAnswers(runtime.dynamodb, "TransactWriteItems", sends=3):
        response = confirm(api, session["session_id"])

    assert response.status == 201, response.body
    assert len(orders(stack)) == 1
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


@pytest.mark.parametrize(
    ("case", "worker", "outcome", "state"),
    [
        ("capture", "capture_retry", "captured", "CAPTURED"),
        ("roll_forward", "compensation", "rolled_forward", "CAPTURE_PENDING"),
        ("compensate", "compensation", "compensated", "COMPENSATED"),
    ],
)
def test_worker_whose_transition_answer_was_lost_counts_the_order_as_done(
    runtime: Runtime,
    api: Api,
    stack,
    stripe,
    warehouse,
    clock: Clock,
    case: str,
    worker: str,
    outcome: str,
    state: str,
) -> None:
    # Given an order with work due: a failed capture, a stale CAPTURING saga, or a stale unknown authorize
    session = open_session(api)
    if case == "capture":
        stripe.inject("capture", status=500, times=1)
        assert confirm(api, session["session_id"]).status == 202
        clock.advance(61)
    elif case == "roll_forward":
        # A confirm that died after recording the authorization, before capturing
        stale = an_order(S.CAPTURING, authorization_id="pi_stale", now=clock())
        put_all(stack.physical["OrdersTable"]["Ref"], [(stale, "recovery", int(clock()) - 1)])
    else:
        stripe.inject("authorize", status=500, times=1)
        assert confirm(api, session["session_id"]).status == 502
        clock.advance(SEARCH_LAG)  # an empty search is trusted once the last send is older than the lag

    # When the worker runs and the answer to its first transition of the order is lost
    with LoseAnswers(runtime.dynamodb, "UpdateItem", when=_is_transition) as lost:
        summary = run_worker(worker)

    # Then the run counts the order as done (not as taken over by someone else), and it is where the run put it
    assert len(lost.lost) == 1
    assert summary[outcome] == 1, summary
    assert summary["skipped"] == 0
    assert summary["errors"] == 0
    assert orders(stack)[0]["saga_state"] == state
    assert stripe.count("captured") == (1 if case == "capture" else 0)
