"""The failure-matrix rows the workers finish (section 7): capture retry, compensation and stale-saga recovery.

Real scheduled events into the handlers, moto built from template.yaml, the fake providers over 127.0.0.1,
and a clock moved forward instead of waited for.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from checkout.runtime import Runtime
from tests.conftest import Clock, LambdaContext, unused_port
from tests.integration.test_confirm import Api, confirm, open_session, order_of, path_of
from tests.invariants import assert_money_invariants, orders, records

EVENTS = Path(__file__).resolve().parents[2] / "events"
STALE = 120
SEARCH_LAG = 3600  # PAYMENT_SEARCH_LAG_SECONDS, the template's default


def run_worker(name: str, *, timeout: float = 180.0) -> dict[str, Any]:
    """Invoke a worker's handler with its scheduled event, as EventBridge does."""
    handler = importlib.import_module(f"functions.{name}.app").lambda_handler
    event = json.loads((EVENTS / f"{name}_schedule.json").read_text())
    context = LambdaContext(timeout_seconds=timeout, function_name=f"checkout-local-{name}")
    result: dict[str, Any] = handler(event, context)
    return result


def pending_order(api: Api, stripe, customer: str = "cus_1") -> dict[str, Any]:
    """A confirmed checkout whose capture failed once: 202, CAPTURE_PENDING, due in CAPTURE_BACKOFF_BASE_SECONDS."""
    session = open_session(api, customer)
    stripe.inject("capture", status=500, times=1)
    response = confirm(api, session["session_id"], customer)
    assert response.status == 202, response.body
    assert response.body["status"] == "payment_pending"
    return order_of(api, response.body["order_id"], customer)


def stored(stack, order_id: str) -> dict[str, Any]:
    return next(o for o in orders(stack) if o["order_id"] == order_id)


def capture_keys(stripe, order_id: str) -> list[str]:
    return [
        r["idempotency_key"]
        for r in stripe.requests
        if r["operation"] == "capture" and (r["idempotency_key"] or "").startswith(f"{order_id}:")
    ]


class Crash(BaseException):
    """The Lambda dying mid-invocation: nothing after this point runs, no handler catches it."""


class CrashingDynamoDB:
    """moto's DynamoDB that kills the invocation at the write moving an order to `state`."""

    def __init__(self, client: Any, state: str) -> None:
        self._client = client
        self._state = state

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != "update_item":
            return real

        def call(**kwargs: Any) -> Any:
            if kwargs.get("ExpressionAttributeValues", {}).get(":state") == {"S": self._state}:
                raise Crash(f"process died before recording {self._state}")
            return real(**kwargs)

        return call


# --- capture retry ----------------------------------------------------------------------------------


def test_pending_capture_is_not_retried_before_it_is_due(api: Api, stack, stripe) -> None:
    order = pending_order(api, stripe)

    summary = run_worker("capture_retry")

    assert summary["due"] == 0
    assert stored(stack, order["order_id"])["saga_state"] == "CAPTURE_PENDING"
    assert stripe.count("captured") == 0


def test_due_capture_is_captured_by_the_retry_worker_once(api: Api, stack, stripe, warehouse, clock: Clock) -> None:
    # Given a capture that failed in the confirm (a stored 500) and is now due
    order = pending_order(api, stripe)
    clock.advance(61)

    # When the retry worker runs
    summary = run_worker("capture_retry")

    # Then the order is captured once, under a new key only because the read-back proved the first did nothing
    assert summary["captured"] == 1
    assert summary["due"] == 1
    after = order_of(api, order["order_id"])
    assert after["saga_state"] == "CAPTURED"
    assert after["status"] == "confirmed"
    assert path_of(after)[-2:] == ["CAPTURE_PENDING", "CAPTURED"]
    assert capture_keys(stripe, order["order_id"]) == [f"{order['order_id']}:capture", f"{order['order_id']}:capture:2"]
    assert stripe.count("captured") == 1
    # And a second run finds nothing due
    assert run_worker("capture_retry")["due"] == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_lost_capture_response_then_retry_worker_charges_exactly_once(
    api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a capture the provider made but whose answer was lost, and a read-back that failed too
    session = open_session(api)
    stripe.inject("capture", lose_response=True, times=1)
    stripe.inject("retrieve", status=500, times=1)
    response = confirm(api, session["session_id"])
    assert response.status == 202
    assert stripe.count("captured") == 1
    order_id = response.body["order_id"]
    assert order_of(api, order_id)["saga_state"] == "CAPTURE_PENDING"

    # When the retry worker runs once the capture is due
    clock.advance(61)
    summary = run_worker("capture_retry")

    # Then it replays the same capture key: the provider's ledger shows exactly one capture
    assert summary["captured"] == 1
    assert order_of(api, order_id)["saga_state"] == "CAPTURED"
    assert set(capture_keys(stripe, order_id)) == {f"{order_id}:capture"}
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_capture_failing_is_retried_at_backoff_times_then_compensated(
    api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given a provider that refuses every capture
    session = open_session(api)
    stripe.inject("capture", status=500)
    response = confirm(api, session["session_id"])
    assert response.status == 202
    order_id = response.body["order_id"]
    first_due = int(stored(stack, order_id)["next_attempt_at"])
    assert first_due == pytest.approx(clock() + 60, abs=2)

    # When the retry worker runs each time the order is due
    delays = []
    for attempt in range(1, 6):
        clock.advance(int(stored(stack, order_id)["next_attempt_at"]) - clock() + 1)
        before = clock()
        summary = run_worker("capture_retry")
        order = stored(stack, order_id)
        assert order["capture_attempts"] == attempt
        if attempt < 5:
            assert summary["rescheduled"] == 1
            assert order["saga_state"] == "CAPTURE_PENDING"
            delays.append(int(order["next_attempt_at"]) - before)

    # Then each wait doubled (base 60 s, less up to 20 % jitter), and after 5 attempts the order is exhausted
    for n, delay in enumerate(delays, start=1):
        assert 0.8 * 60 * 2**n - 1 <= delay <= 60 * 2**n + 1, (n, delay)
    assert summary["exhausted"] == 1
    assert stored(stack, order_id)["saga_state"] == "CAPTURE_FAILED"
    assert stripe.count("captured") == 0

    # When the compensation worker runs
    compensated = run_worker("compensation")

    # Then the hold is voided exactly once, the stock released, the order cancelled, nobody alerted
    assert compensated["compensated"] == 1
    after = order_of(api, order_id)
    assert after["saga_state"] == "COMPENSATED"
    assert after["status"] == "cancelled"
    assert path_of(after)[-3:] == ["CAPTURE_FAILED", "COMPENSATING", "COMPENSATED"]
    assert stripe.count("canceled") == 1
    assert stripe.count("captured") == 0
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    assert alerts_inbox() == []
    assert confirm(api, session["session_id"]).body["error"] == "session_closed"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_two_workers_at_once_process_each_order_once(api: Api, stack, stripe, warehouse, clock: Clock) -> None:
    # Given 12 due captures and a provider slow enough for two runs to overlap
    ids = [pending_order(api, stripe, customer=f"cus_{n}")["order_id"] for n in range(12)]
    clock.advance(61)
    stripe.inject("capture", delay=0.1)

    # When two capture_retry runs start at the same time
    summaries: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: summaries.append(run_worker("capture_retry"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every order was captured by exactly one of them, once
    assert sum(s["captured"] for s in summaries) == 12
    assert stripe.count("captured") == 12
    for order_id in ids:
        assert stored(stack, order_id)["saga_state"] == "CAPTURED"
        assert len(capture_keys(stripe, order_id)) == 2  # the confirm's failed try and one worker's
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_provider_down_for_a_run_opens_the_circuit_and_the_next_run_resumes(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given 8 due captures, and a payment provider that accepts no connection
    ids = [pending_order(api, stripe, customer=f"cus_{n}")["order_id"] for n in range(8)]
    clock.advance(61)
    versions = {order_id: stored(stack, order_id)["version"] for order_id in ids}
    make_runtime(settings={"PAYMENT_API_BASE_URL": f"http://127.0.0.1:{unused_port()}", "WORKER_CONCURRENCY": 1})

    # When the retry worker runs
    outage = run_worker("capture_retry")

    # Then it stops after CIRCUIT_FAILURE_THRESHOLD failures, and marks nothing failed for the outage
    assert outage["circuit"] == "open"
    assert outage["stopped_early"] == "circuit_open"
    assert outage["due"] == 5
    assert outage["exhausted"] == 0
    touched = [order_id for order_id in ids if stored(stack, order_id)["version"] != versions[order_id]]
    assert len(touched) == 5
    for order_id in ids:
        order = stored(stack, order_id)
        assert order["saga_state"] == "CAPTURE_PENDING"
        assert order["capture_attempts"] == 0
        assert order.get("lease_owner") is None

    # When the provider is back and the next run finds them due
    make_runtime()
    clock.advance(61)
    resumed = run_worker("capture_retry")

    # Then every order is captured once
    assert resumed["circuit"] == "closed"
    assert resumed["captured"] == 8
    assert stripe.count("captured") == 8
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_run_stops_taking_work_when_too_little_time_is_left(api: Api, stack, stripe, clock: Clock) -> None:
    # Given a due capture, and an invocation with less left than one payment timeout (2 s) plus a margin
    order = pending_order(api, stripe)
    clock.advance(61)

    summary = run_worker("capture_retry", timeout=5.0)

    # Then the order is left untouched for the next run
    assert summary["stopped_early"] == "out_of_time"
    assert summary["captured"] == 0
    assert stored(stack, order["order_id"])["version"] == order_version(stack, order["order_id"])
    assert run_worker("capture_retry")["captured"] == 1


def order_version(stack, order_id: str) -> int:
    return int(stored(stack, order_id)["version"])


def test_paused_worker_does_nothing_until_unpaused(make_runtime, api: Api, stack, stripe, clock: Clock) -> None:
    # Given a due capture and the run-time switch naming capture_retry
    order = pending_order(api, stripe)
    clock.advance(61)
    name = stack.environment("CaptureRetryFunction")["WORKER_PAUSE_PARAMETER"]
    make_runtime(settings={"WORKER_PAUSE_PARAMETER": name})
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=name, Value="capture_retry", Type="String", Overwrite=True)
    parameters.clear_caches()

    paused = run_worker("capture_retry")

    assert paused["paused"] is True
    assert stored(stack, order["order_id"])["saga_state"] == "CAPTURE_PENDING"
    # When the operator sets it back to none, the next run works
    ssm.put_parameter(Name=name, Value="none", Type="String", Overwrite=True)
    parameters.clear_caches()
    assert run_worker("capture_retry")["captured"] == 1
    assert run_worker("compensation")["paused"] is False


# --- compensation and recovery ---------------------------------------------------------------------


def test_crash_after_authorize_before_it_is_recorded_is_voided_by_recovery(
    make_runtime, runtime: Runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given a confirm whose process dies after the provider authorized, before the order records it
    session = open_session(api)
    make_runtime(dynamodb=CrashingDynamoDB(runtime.dynamodb, "CAPTURING"))
    with pytest.raises(Crash):
        confirm(api, session["session_id"])
    make_runtime()
    [order] = orders(stack)
    assert order["saga_state"] == "AUTHORIZING"
    assert stripe.count("authorized") == 1

    # When the compensation worker runs before the saga is stale, it leaves the order alone
    assert run_worker("compensation")["due"] == 0

    # When it runs after STALE_SAGA_SECONDS
    clock.advance(STALE + 1)
    summary = run_worker("compensation")

    # Then it finds the orphaned authorization, voids it, releases the stock, and cancels the order
    assert summary["recovered"] == 1
    assert summary["compensated"] == 1
    after = order_of(api, order["order_id"])
    assert after["saga_state"] == "COMPENSATED"
    assert path_of(after) == ["AUTHORIZING", "COMPENSATING", "COMPENSATED"]
    assert stripe.count("canceled") == 1
    assert stripe.count("captured") == 0
    intent = stripe.intent_for_order(order["order_id"])[0]
    assert intent["status"] == "canceled"
    assert stored(stack, order["order_id"])["authorization_id"] == intent["id"]
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    assert confirm(api, session["session_id"]).body["error"] == "session_closed"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_authorize_timeout_nobody_retries_is_voided_by_recovery(
    api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given an authorize that timed out (504) and a client that never retried
    session = open_session(api)
    stripe.inject("authorize", delay=2.5, times=1)
    timed_out = confirm(api, session["session_id"])
    assert timed_out.status == 504
    order_id = timed_out.body["order_id"]

    # When recovery runs once the saga is stale and the provider has finished the late authorize
    wait_for(lambda: stripe.count("authorized") == 1)
    clock.advance(STALE + 1)
    summary = run_worker("compensation")

    # Then the hold the late authorize left is voided, never captured
    assert summary["compensated"] == 1
    assert order_of(api, order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("canceled") == 1
    assert stripe.count("captured") == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_unknown_authorize_that_held_nothing_is_closed_without_a_void(
    api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given an authorize answered 5xx (stored by the provider, nothing held)
    session = open_session(api)
    stripe.inject("authorize", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 502

    # When recovery first takes it over, the empty search proves nothing yet (Stripe's index may lag an hour)
    clock.advance(STALE + 1)
    early = run_worker("compensation")
    assert early["left_due"] == 1
    assert orders(stack)[0]["saga_state"] == "AUTH_UNKNOWN"
    # (the re-sent authorize was a replay of the stored 500: it made nothing new, so the lag is not restarted)
    clock.advance(SEARCH_LAG)
    summary = run_worker("compensation")

    # Then the search, trusted once the last send is older than the lag, proves nothing is held: no void, stock released
    assert summary["compensated"] == 1
    [order] = orders(stack)
    assert order["saga_state"] == "COMPENSATED"
    assert [r for r in stripe.requests if r["operation"] == "cancel"] == []
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_unknown_authorize_with_search_down_is_settled_by_resending_authorize(
    api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given an authorize whose answer was lost, and a search that fails when recovery asks
    session = open_session(api)
    stripe.inject("authorize", lose_response=True, times=1)
    stripe.inject("search", status=500, times=2)
    assert confirm(api, session["session_id"]).status == 502
    [order] = orders(stack)

    clock.advance(STALE + 1)
    summary = run_worker("compensation")

    # Then authorize is sent again under the order's one key, the replay names the intent, and it is voided
    assert summary["compensated"] == 1
    authorize_keys = [r["idempotency_key"] for r in stripe.requests if r["operation"] == "authorize"]
    assert set(authorize_keys) == {f"{order['order_id']}:authorize"}
    assert stripe.count("authorized") == 1
    assert stripe.count("canceled") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_crash_after_capture_before_it_is_recorded_rolls_forward_and_charges_once(
    make_runtime, runtime: Runtime, api: Api, stack, stripe, warehouse, clock: Clock
) -> None:
    # Given a confirm whose process dies after the provider captured, before the order records it
    session = open_session(api)
    make_runtime(dynamodb=CrashingDynamoDB(runtime.dynamodb, "CAPTURED"))
    with pytest.raises(Crash):
        confirm(api, session["session_id"])
    make_runtime()
    [order] = orders(stack)
    assert order["saga_state"] == "CAPTURING"
    assert stripe.count("captured") == 1

    # When recovery runs after STALE_SAGA_SECONDS, then the retry worker
    clock.advance(STALE + 1)
    recovered = run_worker("compensation")
    assert recovered["rolled_forward"] == 1
    assert stored(stack, order["order_id"])["saga_state"] == "CAPTURE_PENDING"
    retried = run_worker("capture_retry")

    # Then the capture is replayed under the same key: confirmed, charged exactly once
    assert retried["captured"] == 1
    after = order_of(api, order["order_id"])
    assert path_of(after)[-3:] == ["CAPTURING", "CAPTURE_PENDING", "CAPTURED"]
    assert set(capture_keys(stripe, order["order_id"])) == {f"{order['order_id']}:capture"}
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_void_failing_during_compensation_is_recorded_queued_and_alerted_once(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given an order whose capture retries are exhausted (one retry allowed here) and a provider refusing voids
    make_runtime(settings={"CAPTURE_MAX_RETRIES": 1})
    session = open_session(api)
    stripe.inject("capture", status=500)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    clock.advance(61)
    assert run_worker("capture_retry")["exhausted"] == 1
    stripe.inject("cancel", status=500)

    # When the compensation worker runs
    summary = run_worker("compensation")

    # Then the order is COMPENSATION_FAILED, with one record, one queue message and exactly one alert
    assert summary["compensation_failed"] == 1
    order = stored(stack, order_id)
    assert order["saga_state"] == "COMPENSATION_FAILED"
    assert order["status"] == "cancelled"
    [record] = records(stack)
    assert record["order_id"] == order_id
    assert record["operation_type"] == "void_authorization"
    assert record["status"] == "pending"
    assert order["compensation_id"] == record["id"]
    queue_url = stack.physical["FailedCompensationsQueue"]["Ref"]
    [message] = boto3.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert json.loads(message["Body"]) == {"compensation_id": record["id"]}
    alerts = alerts_inbox()
    assert [a["kind"] for a in alerts] == ["compensation_failed"]
    assert alerts[0]["order_id"] == order_id
    assert alerts[0]["dlq_recorded"] is True
    # The stock was still released; the hold is named by the open record
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    # And another run neither retries the order (the dlq_processor owns it now) nor alerts again
    clock.advance(STALE + 1)
    assert run_worker("compensation")["due"] == 0
    assert len(alerts_inbox()) == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_provider_down_during_compensation_records_nothing_and_the_next_run_compensates(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given 6 exhausted captures (a refused capture is no outage here), and a provider accepting no connection
    make_runtime(settings={"CAPTURE_MAX_RETRIES": 1, "CIRCUIT_FAILURE_THRESHOLD": 100})
    stripe.inject("capture", status=500)
    for n in range(6):
        session = open_session(api, f"cus_{n}")
        assert confirm(api, session["session_id"], f"cus_{n}").status == 202
    clock.advance(61)
    assert run_worker("capture_retry")["exhausted"] == 6
    stripe.clear_faults()
    down = f"http://127.0.0.1:{unused_port()}"
    make_runtime(settings={"CAPTURE_MAX_RETRIES": 1, "PAYMENT_API_BASE_URL": down, "WORKER_CONCURRENCY": 1})

    # When the compensation worker runs during the outage
    outage = run_worker("compensation")

    # Then the circuit opens, no failure is recorded or alerted, every order is still waiting for compensation
    assert outage["circuit"] == "open"
    assert outage["compensation_failed"] == 0
    assert records(stack) == []
    assert alerts_inbox() == []
    assert {o["saga_state"] for o in orders(stack)} == {"CAPTURE_FAILED"}

    # When the provider is back
    make_runtime(settings={"CAPTURE_MAX_RETRIES": 1})
    resumed = run_worker("compensation")

    # Then all are compensated, each hold voided once
    assert resumed["compensated"] == 6
    assert stripe.count("canceled") == 6
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)
