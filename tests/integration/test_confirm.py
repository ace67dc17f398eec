"""The confirm rows of the failure matrix (section 7), over real API Gateway v2 events, moto and the fakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from checkout.runtime import Runtime
from tests.conftest import ApiResponse, Clock, unused_port
from tests.invariants import assert_money_invariants, orders, records

Api = Callable[..., ApiResponse]
CART = {"currency": "usd", "items": [{"sku": "sku_mug", "quantity": 2, "unit_amount": 1250}]}


def open_session(api: Api, customer: str = "cus_1", payment_method: str | None = "pm_card_visa") -> dict[str, Any]:
    body: dict[str, Any] = {"customer_id": customer, **CART}
    if payment_method:
        body["payment_method"] = payment_method
    response = api("POST", "/checkout/sessions", body=body, iam=True)
    assert response.status == 201, response.body
    return response.body


def confirm(api: Api, session_id: str, customer: str = "cus_1", **kwargs: Any) -> ApiResponse:
    headers = {"X-Session-ID": session_id, "X-Customer-ID": customer, **kwargs.pop("headers", {})}
    return api("POST", "/checkout/confirm", headers=headers, **kwargs)


def order_of(api: Api, order_id: str, customer: str = "cus_1") -> dict[str, Any]:
    response = api("GET", f"/orders/{order_id}", headers={"X-Customer-ID": customer})
    assert response.status == 200, response.body
    return response.body


def path_of(order: dict[str, Any]) -> list[str]:
    return [h["to"] for h in order["history"]]


def test_happy_path_charges_once_and_confirms(api: Api, stack, stripe, warehouse) -> None:
    # Given an open session with stock reserved
    session = open_session(api)
    assert session["amount_total"] == 2500
    assert session["status"] == "open"
    assert warehouse.reservations[session["reservation_id"]]["status"] == "held"

    # When the customer confirms
    response = confirm(api, session["session_id"])

    # Then the order is confirmed, charged exactly once for its total
    assert response.status == 201
    assert response.body["status"] == "confirmed"
    assert response.body["amount_total"] == 2500
    order = order_of(api, response.body["order_id"])
    assert order["saga_state"] == "CAPTURED"
    assert path_of(order) == ["AUTHORIZING", "AUTHORIZED", "CAPTURING", "CAPTURED"]
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    keys = [r["idempotency_key"] for r in stripe.requests if r["method"] == "POST"]
    assert keys == [f"{order['order_id']}:authorize", f"{order['order_id']}:capture"]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_confirming_a_confirmed_session_again_returns_the_same_order(api: Api, stripe) -> None:
    session = open_session(api)
    first = confirm(api, session["session_id"])
    calls = len(stripe.requests)

    again = confirm(api, session["session_id"])

    assert again.status == 200
    assert again.body["order_id"] == first.body["order_id"]
    assert len(stripe.requests) == calls


@pytest.mark.parametrize("case", ["unknown", "other_customer", "expired"])
def test_unknown_expired_or_foreign_session_is_404_and_writes_nothing(
    api: Api, stack, stripe, clock: Clock, case: str
) -> None:
    session = open_session(api)
    session_id, customer = session["session_id"], "cus_1"
    if case == "unknown":
        session_id = "cs_does_not_exist"
    elif case == "other_customer":
        customer = "cus_2"
    else:
        clock.advance(1801)

    response = confirm(api, session_id, customer)

    assert response.status == 404
    assert response.body["error"] == "session_not_found"
    assert orders(stack) == []
    assert stripe.requests == []


def test_two_concurrent_confirms_create_one_order(api: Api, stack, stripe, warehouse) -> None:
    # Given a provider slow enough that the second confirm arrives while the first is in flight
    session = open_session(api)
    stripe.inject("authorize", delay=0.5, times=1)
    results: list[ApiResponse] = []

    def run() -> None:
        results.append(confirm(api, session["session_id"]))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()

    statuses = sorted(r.status for r in results)
    assert statuses in ([201, 409], [200, 201])
    assert len({r.body["order_id"] for r in results}) == 1
    loser = next(r for r in results if r.status != 201)
    if loser.status == 409:
        assert loser.body["error"] == "confirm_in_progress"
    assert len(orders(stack)) == 1
    assert stripe.count("authorized") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_declined_card_is_402_and_reopens_the_session(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api, payment_method="pm_card_chargeDeclined")

    declined = confirm(api, session["session_id"])

    assert declined.status == 402
    assert declined.body["error"] == "payment_declined"
    assert order_of(api, declined.body["order_id"])["saga_state"] == "DECLINED"
    assert stripe.count("captured") == 0
    # And the session is open again: a new card gets a new order
    retried = confirm(api, session["session_id"], body={"payment_method": "pm_card_visa"})
    assert retried.status == 201
    assert retried.body["order_id"] != declined.body["order_id"]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_unreachable_provider_is_503_auth_failed_and_session_open(
    make_runtime, api: Api, stack, stripe, warehouse
) -> None:
    session = open_session(api)
    make_runtime(settings={"PAYMENT_API_BASE_URL": f"http://127.0.0.1:{unused_port()}"})

    response = confirm(api, session["session_id"])

    assert response.status == 503
    assert response.body["error"] == "payment_unavailable"
    [order] = orders(stack)
    assert order["saga_state"] == "AUTH_FAILED"
    # The session is open again once the provider is back
    make_runtime()
    assert confirm(api, session["session_id"]).status == 201


def test_authorize_timeout_is_504_within_budget_then_retry_resumes_same_order(
    api: Api, stack, stripe, warehouse
) -> None:
    # Given a provider that takes longer than the payment timeout (2 s here) to authorize
    session = open_session(api)
    stripe.inject("authorize", delay=3, times=1)

    started = time.monotonic()
    timed_out = confirm(api, session["session_id"])
    elapsed = time.monotonic() - started

    # Then the client hears 504 well before the provider answers, and the order waits in AUTH_UNKNOWN
    assert timed_out.status == 504
    assert timed_out.body["error"] == "payment_timeout"
    assert elapsed < 3
    order_id = timed_out.body["order_id"]
    assert order_of(api, order_id)["saga_state"] == "AUTH_UNKNOWN"

    # When the provider has finished, and the client retries the same confirm
    deadline = time.monotonic() + 10
    while stripe.count("authorized") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    retried = confirm(api, session["session_id"])

    # Then the same order resumes under the same authorize key, and is charged once
    assert retried.status == 201
    assert retried.body["order_id"] == order_id
    authorize_keys = {r["idempotency_key"] for r in stripe.requests if r["operation"] == "authorize"}
    assert authorize_keys == {f"{order_id}:authorize"}
    assert stripe.count("authorized") == 1
    assert path_of(order_of(api, order_id)) == [
        "AUTHORIZING",
        "AUTH_UNKNOWN",
        "AUTHORIZED",
        "CAPTURING",
        "CAPTURED",
    ]
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_authorize_5xx_is_502_and_a_replayed_5xx_stays_unknown(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("authorize", status=500, times=1)

    first = confirm(api, session["session_id"])

    assert first.status == 502
    assert first.body["error"] == "payment_outcome_unknown"
    order_id = first.body["order_id"]
    assert order_of(api, order_id)["saga_state"] == "AUTH_UNKNOWN"
    # The provider stored the 500 under the key and replays it; the search finds nothing held
    retried = confirm(api, session["session_id"])
    assert retried.status == 502
    assert retried.body["order_id"] == order_id
    assert order_of(api, order_id)["saga_state"] == "AUTH_UNKNOWN"
    # Each retry gives its lease back, so the next one is answered the same way rather than 409
    assert confirm(api, session["session_id"]).status == 502
    assert stripe.count("authorized") == 0
    assert_money_invariants(stack, stripe, warehouse, converged=False)


def test_lost_authorize_answer_is_502_and_retry_resumes_with_one_hold(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("authorize", lose_response=True, times=1)
    stripe.inject("search", status=500, times=1)

    lost = confirm(api, session["session_id"])

    assert lost.status == 502
    assert order_of(api, lost.body["order_id"])["saga_state"] == "AUTH_UNKNOWN"
    assert stripe.count("authorized") == 1

    retried = confirm(api, session["session_id"])

    assert retried.status == 201
    assert retried.body["order_id"] == lost.body["order_id"]
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_lost_authorize_answer_settled_by_search_in_the_same_request(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("authorize", lose_response=True, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 201
    assert stripe.count("authorized") == 1
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


class FailingDynamoDB:
    """moto's DynamoDB, with the next `failures` calls of one operation failing as a throttled table would."""

    def __init__(self, client: Any, operation: str, failures: int) -> None:
        self._client = client
        self._operation = operation
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._operation:
            return real

        def call(**kwargs: Any) -> Any:
            if self.failures > 0:
                self.failures -= 1
                error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"}}
                raise ClientError(error, name)  # type: ignore[arg-type]
            return real(**kwargs)

        return call


def test_order_write_failing_after_authorize_voids_at_once(
    make_runtime, runtime: Runtime, api: Api, stack, stripe, warehouse, alerts_inbox
) -> None:
    session = open_session(api)
    make_runtime(dynamodb=FailingDynamoDB(runtime.dynamodb, "update_item", failures=1))

    response = confirm(api, session["session_id"])

    assert response.status == 503
    assert response.body["error"] == "order_not_recorded"
    assert stripe.count("authorized") == 1
    assert stripe.count("canceled") == 1
    assert stripe.count("captured") == 0
    [order] = orders(stack)
    assert order["saga_state"] == "COMPENSATED"
    assert warehouse.reservations[session["reservation_id"]]["status"] == "released"
    assert records(stack) == []
    assert alerts_inbox() == []
    # The session is closed: its order was cancelled
    assert confirm(api, session["session_id"]).body["error"] == "session_closed"
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_order_write_and_void_failing_records_the_failure_with_one_alert(
    make_runtime, runtime: Runtime, api: Api, stack, stripe, warehouse, alerts_inbox
) -> None:
    session = open_session(api)
    make_runtime(dynamodb=FailingDynamoDB(runtime.dynamodb, "update_item", failures=1))
    stripe.inject("cancel", status=500)

    response = confirm(api, session["session_id"])

    assert response.status == 503
    [order] = orders(stack)
    assert order["saga_state"] == "COMPENSATION_FAILED"
    assert order["status"] == "cancelled"
    [record] = records(stack)
    assert record["operation_type"] == "void_authorization"
    assert record["order_id"] == order["order_id"]
    assert record["status"] == "pending"
    assert record["authorization_id"] == order["authorization_id"]
    assert record["max_retries"] == 3
    assert record["alert_sent"] is True
    import boto3

    queue = boto3.client("sqs").receive_message(QueueUrl=stack.physical["FailedCompensationsQueue"]["Ref"])
    assert [m["Body"] for m in queue["Messages"]] == [f'{{"compensation_id": "{record["id"]}"}}']
    [alert] = alerts_inbox()
    assert alert["kind"] == "compensation_failed"
    assert alert["subject"] == f"[checkout] compensation_failed: order {order['order_id']}"
    assert alert["attributes"] == {"kind": "compensation_failed", "severity": "critical"}
    assert alert["dlq_recorded"] is True
    assert alert["compensation_id"] == record["id"]
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_capture_failure_is_202_payment_pending_and_due_for_retry(
    api: Api, runtime: Runtime, stack, stripe, warehouse, clock: Clock
) -> None:
    session = open_session(api)
    stripe.inject("capture", status=500)

    response = confirm(api, session["session_id"])

    assert response.status == 202
    assert response.body["status"] == "payment_pending"
    [order] = orders(stack)
    assert order["saga_state"] == "CAPTURE_PENDING"
    assert int(order["next_attempt_at"]) == pytest.approx(clock() + 60, abs=2)
    assert order["work_queue"].partition("#")[0] == "capture"  # in the order's shard of the capture queue
    assert stripe.count("captured") == 0
    # The 500 is stored under the first key, so the retry worker must use a second one (read-back proved it)
    assert order["key_attempts"] == {"capture": 2}
    assert_money_invariants(stack, stripe, warehouse, converged=False)


def test_capture_timeout_is_202_payment_pending(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("capture", delay=3, times=1)
    stripe.inject("retrieve", status=503, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 202
    [order] = orders(stack)
    assert order["saga_state"] == "CAPTURE_PENDING"
    assert order["key_attempts"] == {"capture": 1}


def test_lost_capture_answer_with_failed_read_back_is_202_and_charged_once(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("capture", lose_response=True, times=1)
    stripe.inject("retrieve", status=500, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 202
    [order] = orders(stack)
    assert order["saga_state"] == "CAPTURE_PENDING"
    # The provider did capture; the retry worker's capture under the same key will replay it
    assert stripe.count("captured") == 1
    assert order["key_attempts"] == {"capture": 1}


def test_lost_capture_answer_settled_by_read_back_is_201(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    stripe.inject("capture", lose_response=True, times=1)

    response = confirm(api, session["session_id"])

    assert response.status == 201
    assert stripe.count("captured") == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


def test_get_order_of_another_customer_is_404(api: Api) -> None:
    session = open_session(api)
    order_id = confirm(api, session["session_id"]).body["order_id"]

    response = api("GET", f"/orders/{order_id}", headers={"X-Customer-ID": "cus_2"})

    assert response.status == 404
    assert response.body["error"] == "order_not_found"
