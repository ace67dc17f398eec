"""The demo's scenarios over real HTTP against a running local stack: what the client sees, where the saga ends,
what the provider's ledger shows, which alerts arrive; every money invariant holds."""

from __future__ import annotations

import pytest

from local.demo import LocalApi, Outcome, render, run_scenario, stack_wide_invariants

pytestmark = pytest.mark.e2e

# The stack runs with PaymentTimeoutSeconds=2; a delay well past it stands in for the plan's 20 s.
DELAY_SECONDS = 5.0


def scenario(api: LocalApi, key: str) -> Outcome:
    """Runs one scenario; fails on any broken expectation or invariant, skips (saying why) what the template
    cannot run yet, after checking what did run."""
    outcome = run_scenario(api, key, delay_seconds=DELAY_SECONDS)
    assert outcome.error is None, render(outcome, 0)
    assert all(c.ok for c in outcome.checks + outcome.invariants), render(outcome, 0)
    return outcome


def converged(outcome: Outcome) -> None:
    if outcome.skipped:
        pytest.skip(f"{outcome.key}: {outcome.skipped}")


def only_order(outcome: Outcome) -> str:
    (order_id,) = outcome.orders
    return order_id


def test_happy_path_charges_once(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "happy_path")

    confirm = outcome.answer("POST", "/checkout/confirm")
    assert (confirm.status, confirm.body["status"]) == (201, "confirmed")
    order_id = only_order(outcome)
    assert outcome.paths[order_id] == ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]
    assert outcome.ledger[order_id]["authorized"] == 1
    assert outcome.ledger[order_id]["captured"] == 1


def test_declined_card_holds_nothing_and_reopens_the_session(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "declined_card")

    declined = outcome.answer("POST", "/checkout/confirm", status=402)
    assert declined.body["error"] == "payment_declined"
    first, second = outcome.orders
    assert outcome.states == {first: "DECLINED", second: "CAPTURED"}
    assert outcome.ledger[first]["authorized"] == 0
    assert outcome.ledger[second]["captured"] == 1


def test_payment_delay_answers_504_in_time_and_recovery_voids_the_late_hold(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "payment_delay")

    timeout = outcome.answer("POST", "/checkout/confirm", status=504)
    assert timeout.body["error"] == "payment_timeout"
    assert timeout.seconds < DELAY_SECONDS
    order_id = only_order(outcome)
    assert outcome.ledger[order_id]["authorized"] == 1
    converged(outcome)
    assert outcome.states[order_id] == "COMPENSATED"
    assert outcome.ledger[order_id]["canceled"] == 1
    assert outcome.ledger[order_id]["captured"] == 0
    assert outcome.answer("POST", "/checkout/confirm", status=409).body["error"] == "session_closed"


def test_capture_failing_then_recovering_is_retried_and_captured_once(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "capture_recovers")

    assert outcome.answer("POST", "/checkout/confirm").status == 202
    order_id = only_order(outcome)
    converged(outcome)
    assert outcome.states[order_id] == "CAPTURED"
    assert "CAPTURE_PENDING" in outcome.paths[order_id]
    assert outcome.ledger[order_id]["captured"] == 1


def test_capture_failing_until_compensation_voids_and_releases(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "capture_exhausted")

    assert outcome.answer("POST", "/checkout/confirm").status == 202
    order_id = only_order(outcome)
    converged(outcome)
    assert outcome.states[order_id] == "COMPENSATED"
    assert "CAPTURE_FAILED" in outcome.paths[order_id]
    assert outcome.ledger[order_id]["captured"] == 0
    assert outcome.ledger[order_id]["canceled"] == 1


def test_void_failing_is_recorded_alerted_retried_and_resolved_by_the_operator(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "void_fails_into_dlq")
    converged(outcome)

    order_id = only_order(outcome)
    (record,) = outcome.records[order_id]
    assert record["status"] == "resolved"
    assert outcome.states[order_id] == "COMPENSATED"
    kinds = sorted(a["kind"] for a in outcome.alerts)
    assert kinds == ["compensation_exhausted", "compensation_failed"]
    assert outcome.answer("POST", "/admin/compensations/").status == 202
    assert outcome.ledger[order_id]["canceled"] == 1


def test_a_redriven_dlq_message_is_processed_again(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "redrive_dlq")
    converged(outcome)

    order_id = only_order(outcome)
    (record,) = outcome.records[order_id]
    assert record["status"] == "resolved"
    assert outcome.states[order_id] == "COMPENSATED"
    assert local_api.queue_depth("FailedCompensationsDLQ") == 0


def test_3d_secure_completed_is_captured_on_the_next_confirm(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "three_ds_completed")

    waiting = outcome.answer("POST", "/checkout/confirm", status=202)
    assert waiting.body["status"] == "requires_action"
    assert waiting.body["next_action"]["type"] == "use_stripe_sdk"
    order_id = only_order(outcome)
    assert outcome.paths[order_id] == ["AUTHORIZING", "AUTH_ACTION_REQUIRED", "AUTHORIZED", "CAPTURING", "CAPTURED"]
    assert outcome.ledger[order_id]["captured"] == 1


def test_3d_secure_failed_is_402_and_the_session_opens_again(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "three_ds_failed")

    assert outcome.answer("POST", "/checkout/confirm", status=402).body["error"] == "payment_declined"
    first, second = outcome.orders
    assert outcome.states == {first: "DECLINED", second: "CAPTURED"}
    assert outcome.ledger[first]["authorized"] == 0


def test_3d_secure_abandoned_is_cancelled_once_the_session_expires(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "three_ds_abandoned")
    converged(outcome)

    order_id = only_order(outcome)
    assert outcome.states[order_id] == "COMPENSATED"
    assert outcome.ledger[order_id]["canceled"] == 1
    assert outcome.records.get(order_id, []) == []
    assert [a for a in outcome.alerts if a.get("order_id") == order_id] == []


def test_authorize_unknown_while_search_lags_an_hour_is_still_voided(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "authorize_unknown_search_lags")
    converged(outcome)

    order_id = only_order(outcome)
    assert outcome.states[order_id] == "COMPENSATED"
    assert outcome.ledger[order_id]["authorized"] == 1
    assert outcome.ledger[order_id]["canceled"] == 1


def test_capture_answer_lost_until_compensation_is_refunded_exactly_once(local_api: LocalApi) -> None:
    outcome = scenario(local_api, "capture_answer_lost")
    converged(outcome)

    order_id = only_order(outcome)
    assert outcome.states[order_id] == "COMPENSATED"
    assert outcome.ledger[order_id]["captured"] == 1
    assert outcome.ledger[order_id]["refunded"] == 1
    assert outcome.records.get(order_id, []) == []


def test_no_order_of_the_whole_run_was_charged_twice(local_api: LocalApi) -> None:
    checks = stack_wide_invariants(local_api)

    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
