"""Behaviour of the fake Stripe PaymentIntents provider, over real HTTP."""

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from local.fake_payment import FakeStripe


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    # No search lag here: these tests are about the other behaviours (tests/contract states the lag).
    with FakeStripe(search_lag_seconds=0) as fake:
        yield fake


@pytest.fixture
def client(stripe: FakeStripe) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stripe.url, headers={"Authorization": "Bearer sk_test_fake"}, timeout=5) as http:
        yield http


def authorize(
    client: httpx.Client,
    order_id: str = "order-1",
    *,
    key: str | None = None,
    amount: int = 1500,
    payment_method: str = "pm_card_visa",
) -> httpx.Response:
    return client.post(
        "/v1/payment_intents",
        data={
            "amount": str(amount),
            "currency": "eur",
            "payment_method": payment_method,
            "confirm": "true",
            "capture_method": "manual",
            "metadata[order_id]": order_id,
            # Since 2023-08-16 a confirm at creation needs this or a return_url (tests/contract states that rule).
            "automatic_payment_methods[enabled]": "true",
            "automatic_payment_methods[allow_redirects]": "never",
        },
        headers={"Idempotency-Key": key} if key else {},
    )


def authorized_intent_id(client: httpx.Client, order_id: str = "order-1") -> str:
    response = authorize(client, order_id)
    assert response.status_code == 200
    intent_id: str = response.json()["id"]
    return intent_id


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# ---- happy paths ---------------------------------------------------------------------------------


def test_authorize_holds_the_amount_in_a_capturable_intent(client: httpx.Client, stripe: FakeStripe) -> None:
    # When
    response = authorize(client, "order-1", key="k-auth", amount=1500)

    # Then
    assert response.status_code == 200
    intent = response.json()
    assert intent["id"].startswith("pi_")
    assert intent["object"] == "payment_intent"
    assert intent["status"] == "requires_capture"
    assert intent["capture_method"] == "manual"
    assert (intent["amount"], intent["currency"], intent["amount_received"]) == (1500, "eur", 0)
    assert intent["payment_method"] == "pm_card_visa"
    assert intent["metadata"] == {"order_id": "order-1"}
    assert isinstance(intent["created"], int)
    [event] = stripe.ledger
    assert event["op"] == "authorized"
    assert (event["id"], event["order_id"], event["amount"], event["currency"]) == (
        intent["id"],
        "order-1",
        1500,
        "eur",
    )
    assert event["idempotency_key"] == "k-auth"
    assert event["at"].endswith("Z")


def test_capture_charges_the_authorized_amount(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client)

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/capture", headers={"Idempotency-Key": "k-cap"})

    # Then
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["amount_received"] == 1500
    assert stripe.intents[intent_id]["status"] == "succeeded"
    assert stripe.count("captured", order_id="order-1") == 1


def test_partial_capture_receives_only_the_amount_to_capture(client: httpx.Client) -> None:
    # Given
    intent_id = authorized_intent_id(client)

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/capture", data={"amount_to_capture": "1000"})

    # Then
    assert response.status_code == 200
    assert response.json()["amount_received"] == 1000


def test_cancel_releases_an_uncaptured_authorization(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client)

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/cancel")

    # Then
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert stripe.count("canceled", order_id="order-1") == 1
    assert stripe.ledger[-1]["released"] == 1500


def test_retrieve_returns_the_current_intent(client: httpx.Client) -> None:
    # Given
    intent_id = authorized_intent_id(client)

    # When
    response = client.get(f"/v1/payment_intents/{intent_id}")

    # Then
    assert response.status_code == 200
    assert response.json()["id"] == intent_id
    assert response.json()["status"] == "requires_capture"


def test_refund_of_a_captured_intent_records_the_refunded_amount(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    client.post(f"/v1/payment_intents/{intent_id}/capture")

    # When
    partial = client.post("/v1/refunds", data={"payment_intent": intent_id, "amount": "500"})
    rest = client.post("/v1/refunds", data={"payment_intent": intent_id})
    again = client.post("/v1/refunds", data={"payment_intent": intent_id})

    # Then
    assert partial.status_code == 200
    refund = partial.json()
    assert refund["id"].startswith("re_")
    assert (refund["object"], refund["amount"], refund["payment_intent"], refund["status"]) == (
        "refund",
        500,
        intent_id,
        "succeeded",
    )
    assert rest.status_code == 200
    assert rest.json()["amount"] == 1000
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "charge_already_refunded"
    # A PaymentIntent has no refunded amount; the refunds are listed by payment_intent
    assert "amount_refunded" not in stripe.intents[intent_id]
    listed = client.get("/v1/refunds", params={"payment_intent": intent_id}).json()
    assert [r["amount"] for r in listed["data"]] == [1000, 500]
    assert [e["amount"] for e in stripe.ledger if e["op"] == "refunded"] == [500, 1000]


def test_refund_of_an_uncaptured_intent_is_rejected(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client)

    # When
    response = client.post("/v1/refunds", data={"payment_intent": intent_id})

    # Then
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert stripe.count("refunded") == 0


def test_search_by_order_id_finds_only_that_orders_intents_newest_first(client: httpx.Client) -> None:
    # Given
    first = authorized_intent_id(client, "order-1")
    second = authorized_intent_id(client, "order-1")
    authorized_intent_id(client, "order-2")

    # When
    response = client.get("/v1/payment_intents/search", params={"query": "metadata['order_id']:'order-1'"})

    # Then
    assert response.status_code == 200
    result = response.json()
    assert result["object"] == "search_result"
    assert result["has_more"] is False
    assert [intent["id"] for intent in result["data"]] == [second, first]


def test_search_in_another_form_is_rejected(client: httpx.Client) -> None:
    # When
    response = client.get("/v1/payment_intents/search", params={"query": "status:'succeeded'"})

    # Then
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# ---- declines and state errors -------------------------------------------------------------------


def test_declined_card_answers_402_and_leaves_a_declined_intent_holding_nothing(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # When
    response = authorize(client, "order-9", payment_method="pm_card_chargeDeclined")

    # Then
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"], error["decline_code"]) == ("card_error", "card_declined", "generic_decline")
    intent = error["payment_intent"]
    assert intent["status"] == "requires_payment_method"
    assert client.get(f"/v1/payment_intents/{intent['id']}").json()["status"] == "requires_payment_method"
    found = client.get("/v1/payment_intents/search", params={"query": "metadata['order_id']:'order-9'"})
    assert [i["id"] for i in found.json()["data"]] == [intent["id"]]
    assert stripe.count("declined", order_id="order-9") == 1
    assert stripe.count("authorized") == 0


def test_decline_fault_declines_a_good_card(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    stripe.inject("authorize", decline=True, times=1)

    # When
    declined = authorize(client, "order-1")
    accepted = authorize(client, "order-1")

    # Then
    assert declined.status_code == 402
    assert declined.json()["error"]["code"] == "card_declined"
    assert accepted.status_code == 200


def test_capturing_a_captured_intent_is_unexpected_state_with_the_intent(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    client.post(f"/v1/payment_intents/{intent_id}/capture")

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/capture")

    # Then
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "payment_intent_unexpected_state")
    assert error["payment_intent"]["id"] == intent_id
    assert error["payment_intent"]["status"] == "succeeded"
    assert stripe.count("captured") == 1


def test_cancelling_a_captured_intent_is_unexpected_state_with_the_intent(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    client.post(f"/v1/payment_intents/{intent_id}/capture")

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/cancel")

    # Then
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "payment_intent_unexpected_state"
    assert error["payment_intent"]["status"] == "succeeded"
    assert stripe.count("canceled") == 0


def test_capturing_a_canceled_intent_is_unexpected_state(client: httpx.Client) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    client.post(f"/v1/payment_intents/{intent_id}/cancel")

    # When
    response = client.post(f"/v1/payment_intents/{intent_id}/capture")

    # Then
    assert response.status_code == 400
    assert response.json()["error"]["payment_intent"]["status"] == "canceled"


def test_unknown_intent_is_404_resource_missing(client: httpx.Client) -> None:
    # When
    responses = [
        client.get("/v1/payment_intents/pi_nope"),
        client.post("/v1/payment_intents/pi_nope/capture"),
        client.post("/v1/payment_intents/pi_nope/cancel"),
    ]

    # Then
    assert [r.status_code for r in responses] == [404, 404, 404]
    assert {r.json()["error"]["code"] for r in responses} == {"resource_missing"}


def test_request_without_api_key_is_401(stripe: FakeStripe) -> None:
    # When
    response = httpx.get(f"{stripe.url}/v1/payment_intents/pi_x")

    # Then
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", "0"), ("amount", "12.5"), ("capture_method", "automatic"), ("metadata[order_id]", "")],
)
def test_invalid_authorize_params_are_400_and_not_cached_under_the_key(
    client: httpx.Client, stripe: FakeStripe, field: str, value: str
) -> None:
    # Given
    good = {
        "amount": "1500",
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "capture_method": "manual",
        "metadata[order_id]": "order-1",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
    }

    # When
    bad = client.post("/v1/payment_intents", data={**good, field: value}, headers={"Idempotency-Key": "k"})
    fixed = client.post("/v1/payment_intents", data=good, headers={"Idempotency-Key": "k"})

    # Then
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert fixed.status_code == 200
    assert stripe.count("authorized") == 1


# ---- idempotency ---------------------------------------------------------------------------------


def test_same_key_and_params_replay_the_first_response(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    first = authorize(client, "order-1", key="k-1")

    # When
    second = authorize(client, "order-1", key="k-1")

    # Then
    assert second.status_code == first.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert stripe.count("authorized") == 1
    assert [(r["operation"], r["replayed"]) for r in stripe.requests] == [("authorize", False), ("authorize", True)]


def test_a_declined_authorization_is_replayed_as_declined(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    first = authorize(client, key="k-1", payment_method="pm_card_chargeDeclined")

    # When
    second = authorize(client, key="k-1", payment_method="pm_card_chargeDeclined")

    # Then
    assert (first.status_code, second.status_code) == (402, 402)
    assert second.json() == first.json()
    assert stripe.count("declined") == 1


def test_same_key_with_other_params_is_400_idempotency_error(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    authorize(client, "order-1", key="k-1", amount=1500)

    # When
    response = authorize(client, "order-1", key="k-1", amount=9999)

    # Then
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "idempotency_error"
    assert stripe.count("authorized") == 1


def test_an_injected_500_is_cached_and_replayed_after_the_fault_is_cleared(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    stripe.inject("authorize", status=500)
    failed = authorize(client, "order-1", key="k-1")
    stripe.clear_faults()

    # When
    replay = authorize(client, "order-1", key="k-1")
    fresh = authorize(client, "order-1", key="k-2")

    # Then
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    assert replay.status_code == 500
    assert replay.json() == failed.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert fresh.status_code == 200
    assert [e["idempotency_key"] for e in stripe.ledger] == ["k-2"]


def test_a_fault_with_times_applies_to_that_many_calls_then_disappears(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    stripe.inject("retrieve", status=503, times=2)

    # When
    statuses = [client.get(f"/v1/payment_intents/{intent_id}").status_code for _ in range(3)]

    # Then
    assert statuses == [503, 503, 200]
    assert stripe.faults == {}


def test_a_lost_response_still_authorizes_and_a_retry_with_the_key_replays_it(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    stripe.inject("authorize", lose_response=True, times=1)

    # When
    with pytest.raises(httpx.RemoteProtocolError):
        authorize(client, "order-1", key="k-1")
    retry = authorize(client, "order-1", key="k-1")

    # Then
    [event] = stripe.ledger
    assert event["op"] == "authorized"
    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == event["id"]
    assert stripe.requests[0]["lost"] is True
    assert stripe.requests[0]["status"] is None


def test_a_second_request_while_the_first_with_its_key_is_in_progress_is_409(
    client: httpx.Client, stripe: FakeStripe
) -> None:
    # Given
    stripe.inject("authorize", delay=0.25, times=1)
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(authorize(client, "order-1", key="k-1")))
    first.start()
    wait_until(lambda: stripe.in_flight == 1)

    # When
    concurrent = authorize(client, "order-1", key="k-1")
    first.join(timeout=5)
    after = authorize(client, "order-1", key="k-1")

    # Then
    assert concurrent.status_code == 409
    error = concurrent.json()["error"]
    assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_key_in_use")
    [original] = results
    assert original.status_code == 200
    assert after.status_code == 200
    assert after.json()["id"] == original.json()["id"]
    assert stripe.count("authorized") == 1


def test_stop_returns_promptly_while_a_handler_sleeps_in_a_long_delay(stripe: FakeStripe) -> None:
    # Given
    stripe.inject("retrieve", delay=30)
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            response = httpx.get(
                f"{stripe.url}/v1/payment_intents/pi_x", headers={"Authorization": "Bearer sk"}, timeout=10
            )
            outcome.append(response.status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: stripe.in_flight == 1)

    # When
    started = time.monotonic()
    stripe.stop()
    elapsed = time.monotonic() - started
    caller.join(timeout=5)

    # Then
    assert elapsed < 2
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.TransportError)


def test_a_stopped_fake_starts_again_on_the_same_port_with_its_state(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client)
    url = stripe.url
    stripe.stop()

    # When
    stripe.start()

    # Then
    assert stripe.url == url
    assert client.get(f"/v1/payment_intents/{intent_id}").status_code == 200


# ---- control endpoints and Python API ------------------------------------------------------------


def test_faults_can_be_injected_over_http(client: httpx.Client, stripe: FakeStripe) -> None:
    # When
    injected = httpx.post(f"{stripe.url}/_faults", json={"operation": "authorize", "decline": True, "times": 1})
    declined = authorize(client)

    # Then
    assert injected.status_code == 200
    assert injected.json()["faults"]["authorize"]["decline"] is True
    assert declined.status_code == 402
    assert httpx.get(f"{stripe.url}/_faults").json() == {"faults": {}}


def test_decline_is_refused_for_operations_other_than_authorize(stripe: FakeStripe) -> None:
    # When
    response = httpx.post(f"{stripe.url}/_faults", json={"operation": "capture", "decline": True})

    # Then
    assert response.status_code == 400
    with pytest.raises(ValueError, match="decline"):
        stripe.inject("capture", decline=True)


def test_intent_for_order_and_reset(client: httpx.Client, stripe: FakeStripe) -> None:
    # Given
    intent_id = authorized_intent_id(client, "order-7")

    # When
    found = stripe.intent_for_order("order-7")
    stripe.reset()

    # Then
    assert [i["id"] for i in found] == [intent_id]
    assert (stripe.intents, stripe.ledger, stripe.requests) == ({}, [], [])
    assert client.get(f"/v1/payment_intents/{intent_id}").status_code == 404


def test_the_search_lag_is_set_over_http_and_refused_when_negative(client: httpx.Client, stripe: FakeStripe) -> None:
    # When
    set_lag = client.post("/_settings", json={"search_lag_seconds": 3600})
    negative = client.post("/_settings", json={"search_lag_seconds": -1})
    unknown = client.post("/_settings", json={"lag": 5})

    # Then
    assert (set_lag.status_code, set_lag.json()) == (200, {"search_lag_seconds": 3600.0})
    assert negative.status_code == unknown.status_code == 400
    assert client.get("/_settings").json() == {"search_lag_seconds": 3600.0}
    stripe.reset()
    assert stripe.search_lag_seconds == 0


def test_the_challenge_endpoint_refuses_an_intent_not_waiting_for_it(client: httpx.Client) -> None:
    intent_id = authorized_intent_id(client)

    response = client.post(f"/_3ds/{intent_id}", json={"outcome": "complete"})
    unknown = client.post("/_3ds/pi_missing", json={"outcome": "complete"})
    bad = client.post(f"/_3ds/{intent_id}", json={"outcome": "maybe"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert unknown.status_code == 404
    assert bad.status_code == 400
