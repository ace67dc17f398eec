"""Stripe as it is (issue 8): each of the six ways the old gateway failed on a real account, end to end over the
handlers, moto and a fake as strict as Stripe (ARCHITECTURE.md sections 4-7)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from checkout.runtime import Runtime
from local.fake_payment import FakeStripe
from tests.conftest import Clock
from tests.integration.test_confirm import Api, confirm, open_session, order_of, path_of
from tests.integration.test_workers import STALE, capture_keys, run_worker, stored
from tests.invariants import assert_money_invariants, orders, records

SEARCH_LAG = 3600  # PAYMENT_SEARCH_LAG_SECONDS, the template's default
SESSION_TTL = 1800
THREE_DS = "pm_card_threeDSecure2Required"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# 1. Every authorize was refused: Stripe needs allow_redirects=never (or return_url) since 2023-08-16 -------------


def test_a_card_checkout_is_accepted_by_a_stripe_that_needs_redirects_ruled_out(api: Api, stack, stripe, warehouse):
    session = open_session(api)

    response = confirm(api, session["session_id"])

    assert response.status == 201, response.body
    assert [r["status"] for r in stripe.requests if r["operation"] == "authorize"] == [200]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


# 2. 3-D Secure was read as a decline ----------------------------------------------------------------------------


def test_a_card_that_needs_3d_secure_answers_202_with_what_stripe_js_needs(api: Api, stack, stripe, warehouse):
    # Given a session paid with a card that needs authentication
    session = open_session(api, payment_method=THREE_DS)

    # When the customer confirms
    response = confirm(api, session["session_id"])

    # Then the answer carries the client secret and next action for Stripe.js handleNextAction; nothing is held yet
    assert response.status == 202, response.body
    assert response.body["status"] == "requires_action"
    [intent] = stripe.intents.values()
    assert response.body["client_secret"] == intent["client_secret"]
    assert response.body["next_action"]["type"] == "use_stripe_sdk"
    order = order_of(api, response.body["order_id"])
    assert (order["saga_state"], order["status"]) == ("AUTH_ACTION_REQUIRED", "requires_action")
    assert stripe.count("authorized") == 0


def test_a_completed_challenge_is_captured_on_the_next_confirm(api: Api, stack, stripe, warehouse):
    session = open_session(api, payment_method=THREE_DS)
    waiting = confirm(api, session["session_id"])
    [intent_id] = stripe.intents

    # When the customer completes the challenge in the page, and the page confirms again
    stripe.complete_challenge(intent_id, succeed=True)
    done = confirm(api, session["session_id"])

    # Then the same order is captured once: 201
    assert done.status == 201, done.body
    assert done.body["order_id"] == waiting.body["order_id"]
    assert path_of(order_of(api, done.body["order_id"])) == [
        "AUTHORIZING",
        "AUTH_ACTION_REQUIRED",
        "AUTHORIZED",
        "CAPTURING",
        "CAPTURED",
    ]
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_a_confirm_before_the_challenge_is_done_answers_the_same_202(api: Api, stripe):
    session = open_session(api, payment_method=THREE_DS)
    first = confirm(api, session["session_id"])

    again = confirm(api, session["session_id"])

    assert again.status == 202
    assert again.body == first.body


def test_a_failed_challenge_is_402_and_the_session_stays_open(api: Api, stack, stripe, warehouse):
    session = open_session(api, payment_method=THREE_DS)
    waiting = confirm(api, session["session_id"])
    [intent_id] = stripe.intents

    stripe.complete_challenge(intent_id, succeed=False)
    failed = confirm(api, session["session_id"])

    assert failed.status == 402
    assert failed.body["error"] == "payment_declined"
    assert order_of(api, waiting.body["order_id"])["saga_state"] == "DECLINED"
    # And the customer may pay with another card in the same session
    retried = confirm(api, session["session_id"], body={"payment_method": "pm_card_visa"})
    assert retried.status == 201
    assert retried.body["order_id"] != waiting.body["order_id"]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_an_abandoned_challenge_is_cancelled_by_recovery_once_the_session_expires(
    api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
):
    # Given a customer who never completes the challenge
    session = open_session(api, payment_method=THREE_DS)
    order_id = confirm(api, session["session_id"]).body["order_id"]

    # When recovery runs while the session is open, nothing happens to it
    clock.advance(STALE + 1)
    run_worker("compensation")
    assert stored(stack, order_id)["saga_state"] == "AUTH_ACTION_REQUIRED"

    # And once the session has expired, recovery cancels the intent and gives the stock back
    clock.advance(SESSION_TTL)
    summary = run_worker("compensation")

    assert summary["compensated"] == 1
    assert order_of(api, order_id)["saga_state"] == "COMPENSATED"
    [intent] = stripe.intents.values()
    assert intent["status"] == "canceled"  # a late challenge can no longer create a hold
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    assert records(stack) == []
    assert alerts_inbox() == []
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=[])


# 3. A hold could be left for 7 days: recovery trusted an empty search after 120 s -------------------------------


def test_recovery_does_not_trust_an_empty_search_while_stripe_search_lags_and_still_voids_the_hold(
    api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock
):
    # Given a provider incident: every authorize answer is lost, and search lags an hour
    stripe.set_search_lag(3600)
    session = open_session(api)
    stripe.inject("authorize", lose_response=True)
    unknown = confirm(api, session["session_id"])
    assert unknown.status == 502
    order_id = unknown.body["order_id"]
    [hold] = stripe.intents.values()

    # When recovery takes the order over while search still shows nothing
    clock.advance(STALE + 1)
    early = run_worker("compensation")

    # Then it does not conclude "nothing held": the order stays due, the hold is not forgotten
    assert early["left_due"] == 1
    assert stored(stack, order_id)["saga_state"] == "AUTH_UNKNOWN"
    assert stripe.intents[hold["id"]]["status"] == "requires_capture"

    # And once the index has caught up, recovery finds the hold and voids it
    stripe.clear_faults()
    clock.advance(SEARCH_LAG)
    summary = run_worker("compensation")
    assert summary["compensated"] == 1
    assert stripe.intents[hold["id"]]["status"] == "canceled"
    assert stripe.count("authorized") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_an_authorize_is_never_resent_after_23_hours(api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock):
    # Given an order whose authorize answer was lost a day ago (Stripe may have forgotten the key by now)
    session = open_session(api)
    stripe.inject("authorize", lose_response=True, times=1)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    sends = len([r for r in stripe.requests if r["operation"] == "authorize"])
    clock.advance(23 * 3600 + 1)

    # When the client retries, and recovery runs
    retried = confirm(api, session["session_id"])
    clock.advance(STALE + 1)
    run_worker("compensation")

    # Then no authorize is sent again: the search settles it
    assert retried.status == 502
    assert len([r for r in stripe.requests if r["operation"] == "authorize"]) == sends
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("canceled") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


# 4. A successful refund was recorded as a failure (PaymentIntent.amount_refunded does not exist) --------------


def test_a_refund_whose_answer_is_lost_is_read_back_from_the_refund_list(
    api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock, alerts_inbox
):
    # Given an order whose capture happened but whose answers were all lost (and read-backs failed), until the
    # retries ran out and compensation found it captured
    order_id = capture_lost_until_compensation(api, stripe, clock)
    stripe.inject("refund", lose_response=True, times=1)

    # When compensation refunds it, and the refund's answer is lost too
    summary = run_worker("compensation")

    # Then the refund is read back as a Refund object: refunded exactly once, COMPENSATED, nothing recorded
    assert summary["compensated"] == 1, summary
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("refunded", order_id) == 1
    assert records(stack) == []
    assert alerts_inbox() == []
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=[])


def capture_lost_until_compensation(api: Api, stripe: FakeStripe, clock: Clock) -> str:
    """A checkout whose capture ran at the provider, with every capture answer and read-back lost, retried until
    CAPTURE_FAILED (CAPTURE_MAX_RETRIES = 5)."""
    session = open_session(api)
    stripe.inject("capture", lose_response=True)
    stripe.inject("retrieve", status=503)
    pending = confirm(api, session["session_id"])
    assert pending.status == 202, pending.body
    for _ in range(5):
        clock.advance(2000)
        run_worker("capture_retry")
    order_id: str = pending.body["order_id"]
    assert stripe.count("captured", order_id) == 1
    stripe.clear_faults()
    return order_id


def test_a_capture_lost_on_every_retry_is_refunded_once_at_compensation(
    api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock, alerts_inbox
):
    order_id = capture_lost_until_compensation(api, stripe, clock)
    # Every retry re-sent the one capture key: no answer was ever received, so no second key
    assert set(capture_keys(stripe, order_id)) == {f"{order_id}:capture"}

    summary = run_worker("compensation")

    assert summary["compensated"] == 1, summary
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("captured", order_id) == 1
    assert stripe.count("refunded", order_id) == 1
    assert records(stack) == []
    assert alerts_inbox() == []
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=[])


def test_a_refund_whose_one_key_holds_a_stored_error_waits_for_a_person_alerted_then_settles_once(
    api: Api, runtime: Runtime, stack, stripe: FakeStripe, warehouse, clock: Clock, alerts_inbox, dlq_processor
):
    # Given a capture that went through unseen until compensation, whose refund Stripe answers 500 (stored under
    # the key and replayed for ever: docs.stripe.com/api/idempotent_requests)
    order_id = capture_lost_until_compensation(api, stripe, clock)
    stripe.inject("refund", status=500, times=1)

    # When compensation and then every automatic retry of the record run
    run_worker("compensation")
    for _ in range(3):
        dlq_processor.deliver()
        dlq_processor.visibility_expires()

    # Then the refund never got a second key (section 4): a person is needed, and was told once
    order = stored(stack, order_id)
    assert order["saga_state"] == "COMPENSATION_FAILED"
    [record] = records(stack)
    assert record["operation_type"] == "refund"
    assert record["status"] != "resolved"
    assert {r["idempotency_key"] for r in stripe.requests if r["operation"] == "refund"} == {f"{order_id}:refund"}
    assert [a["compensation_id"] for a in alerts_inbox() if a["kind"] == "compensation_failed"] == [record["id"]]
    assert stripe.count("refunded", order_id) == 0

    # When the operator refunds it in Stripe's dashboard and resolves the record, as the runbook says
    [intent] = stripe.intent_for_order(order_id)
    httpx.post(
        f"{stripe.url}/v1/refunds", data={"payment_intent": intent["id"]}, headers={"Authorization": "Bearer sk_test"}
    ).raise_for_status()
    runtime.operator_actions.resolve(record["id"], by="arn:aws:iam::123456789012:user/operator", note="refunded")

    # Then the order is COMPENSATED and the customer was refunded exactly once
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert records(stack)[0]["status"] == "resolved"
    assert stripe.count("refunded", order_id) == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


# 5. A second capture key while the first may still run ----------------------------------------------------------


def test_after_a_capture_timeout_the_retry_resends_the_same_key_while_the_first_runs(
    api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock
):
    # Given a capture that times out at the confirm (2 s budget) and is still running at the provider
    session = open_session(api)
    stripe.inject("capture", delay=8, times=1)  # far past the 2 s budget, so it still runs when the retry comes
    pending = confirm(api, session["session_id"])
    assert pending.status == 202
    order_id = pending.body["order_id"]
    assert stripe.count("captured") == 0

    # When the retry worker runs while that first capture is still in flight
    clock.advance(3600)
    run_worker("capture_retry")

    # Then it sent the same key again (409 idempotency_key_in_use), never a second key
    assert set(capture_keys(stripe, order_id)) == {f"{order_id}:capture"}
    assert 409 in [r["status"] for r in stripe.requests if r["operation"] == "capture"]

    # And once the first capture has finished, the next retry's replay confirms the order: charged once
    wait_for(lambda: stripe.count("captured") == 1, timeout=20)
    clock.advance(3600)
    run_worker("capture_retry")
    assert stored(stack, order_id)["saga_state"] == "CAPTURED"
    assert set(capture_keys(stripe, order_id)) == {f"{order_id}:capture"}
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_a_second_capture_key_only_after_a_stored_error_and_a_read_back(api: Api, stack, stripe, warehouse, clock):
    # Given a capture answered 500 (stored under the key, replayed for ever) and an intent still requires_capture
    session = open_session(api)
    stripe.inject("capture", status=500, times=1)
    order_id = confirm(api, session["session_id"]).body["order_id"]

    clock.advance(3600)
    run_worker("capture_retry")

    assert capture_keys(stripe, order_id) == [f"{order_id}:capture", f"{order_id}:capture:2"]
    assert stored(stack, order_id)["saga_state"] == "CAPTURED"
    assert_money_invariants(stack, stripe, warehouse, converged=True)


# 6. 429 as an outage, 424 as "not sent", amounts Stripe refuses sent to Stripe -----------------------------------


def test_a_rate_limited_authorize_is_retried_within_the_request(api: Api, stack, stripe, warehouse):
    session = open_session(api)
    stripe.inject("authorize", status=429, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 201, response.body
    assert [r["status"] for r in stripe.requests if r["operation"] == "authorize"] == [429, 200]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_a_424_on_authorize_is_an_unknown_outcome_not_a_failure(api: Api, stack, stripe, warehouse):
    session = open_session(api)
    stripe.inject("authorize", status=424, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 502
    assert response.body["error"] == "payment_outcome_unknown"
    assert order_of(api, response.body["order_id"])["saga_state"] == "AUTH_UNKNOWN"


@pytest.mark.parametrize(
    ("currency", "items", "says"),
    [
        ("usd", [{"sku": "sku_sticker", "quantity": 1, "unit_amount": 49}], "minimum"),
        ("gbp", [{"sku": "sku_sticker", "quantity": 1, "unit_amount": 29}], "minimum"),
        ("jpy", [{"sku": "sku_sticker", "quantity": 1, "unit_amount": 49}], "minimum"),
        ("usd", [{"sku": "sku_car", "quantity": 2, "unit_amount": 60_000_000}], "maximum"),
        ("jpy", [{"sku": "sku_car", "quantity": 2, "unit_amount": 60_000_000}], "maximum"),
        ("kwd", [{"sku": "sku_mug", "quantity": 1, "unit_amount": 1005}], "end in 0"),
    ],
)
def test_an_amount_stripe_would_refuse_is_422_at_session_creation_with_nothing_reserved(
    api: Api, stack, stripe, warehouse, currency: str, items: list[dict[str, Any]], says: str
):
    body = {"customer_id": "cus_1", "currency": currency, "items": items, "payment_method": "pm_card_visa"}

    response = api("POST", "/checkout/sessions", body=body, iam=True)

    assert response.status == 422
    assert response.body["error"] == "validation_error"
    assert "items" in response.body["message"]
    assert says in response.body["message"]
    assert warehouse.ledger == []
    assert orders(stack) == []
    assert stripe.requests == []


def test_the_smallest_amount_stripe_takes_opens_a_session(api: Api, stripe, warehouse):
    body = {
        "customer_id": "cus_1",
        "currency": "usd",
        "items": [{"sku": "sku_sticker", "quantity": 1, "unit_amount": 50}],
        "payment_method": "pm_card_visa",
    }

    session = api("POST", "/checkout/sessions", body=body, iam=True)

    assert session.status == 201
    assert confirm(api, session.body["session_id"]).status == 201


@pytest.mark.parametrize(
    ("fault", "next_key"),
    [
        ({"delay": 8}, 1),  # timed out: the cancel may still be running, so the same key next time
        ({"status": 500}, 2),  # answered (stored, replayed for ever) and read back still cancelable: a new key
    ],
)
def test_a_void_key_moves_on_only_after_an_answer_and_a_proving_read_back(
    api: Api, stack, stripe: FakeStripe, warehouse, clock: Clock, fault: dict[str, Any], next_key: int
):
    # Given an abandoned 3-D Secure checkout that recovery cancels once its session expired
    session = open_session(api, payment_method=THREE_DS)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    stripe.inject("cancel", times=1, **fault)

    # When recovery's cancel fails
    clock.advance(SESSION_TTL + 1)
    run_worker("compensation")

    # Then the next void uses the same key after a timeout, and a new one only after a stored error
    wait_for(lambda: any(r["operation"] == "cancel" for r in stripe.requests), timeout=15)
    assert [r["idempotency_key"] for r in stripe.requests if r["operation"] == "cancel"] == [f"{order_id}:void"]
    assert stored(stack, order_id)["key_attempts"].get("void", 1) == next_key
