"""The payment gateway sorts every answer: declined, not sent, outcome unknown, already done, rejected."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from checkout.payments import (
    STRIPE_API_VERSION,
    PaymentDeclined,
    PaymentInProgress,
    PaymentNotSent,
    PaymentOutcomeUnknown,
    PaymentRateLimited,
    PaymentRejected,
    PaymentUnexpectedState,
    StripePaymentGateway,
)
from local.fake_payment import FakeStripe
from tests.conftest import Clock, unused_port


def gateway(url: str) -> StripePaymentGateway:
    return StripePaymentGateway(url, lambda: "sk_test_local")


def authorize(gw: StripePaymentGateway, *, method: str = "pm_card_visa", key: str = "ord_1:authorize", timeout=2.0):
    return gw.authorize(
        order_id="ord_1", amount=1000, currency="usd", payment_method=method, idempotency_key=key, timeout=timeout
    )


def test_authorize_holds_the_amount_under_the_order_key(stripe: FakeStripe) -> None:
    intent = authorize(gateway(stripe.url))

    assert intent.held
    assert intent.metadata == {"order_id": "ord_1"}
    assert stripe.requests[0]["idempotency_key"] == "ord_1:authorize"


def test_a_decline_is_a_business_answer(stripe: FakeStripe) -> None:
    with pytest.raises(PaymentDeclined) as declined:
        authorize(gateway(stripe.url), method="pm_card_chargeDeclined")

    assert declined.value.decline_code == "generic_decline"
    assert declined.value.intent is not None


def test_connection_refused_is_not_sent() -> None:
    with pytest.raises(PaymentNotSent):
        authorize(gateway(f"http://127.0.0.1:{unused_port()}"))


def test_a_slow_provider_times_out_as_unknown_within_the_budget(stripe: FakeStripe) -> None:
    stripe.inject("authorize", delay=5)
    started = time.monotonic()

    with pytest.raises(PaymentOutcomeUnknown) as unknown:
        authorize(gateway(stripe.url), timeout=0.5)

    assert unknown.value.timed_out
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 502}, {"lose_response": True}])
def test_5xx_or_a_lost_answer_is_unknown(stripe: FakeStripe, fault: dict) -> None:
    stripe.inject("authorize", **fault)

    with pytest.raises(PaymentOutcomeUnknown) as unknown:
        authorize(gateway(stripe.url))

    assert not unknown.value.timed_out


def test_rate_limited_on_every_try_is_not_sent_and_stays_within_the_budget(stripe: FakeStripe) -> None:
    stripe.inject("authorize", status=429)
    started = time.monotonic()

    with pytest.raises(PaymentRateLimited):
        authorize(gateway(stripe.url), timeout=1.5)

    assert time.monotonic() - started < 1.5
    assert stripe.count("authorized") == 0


def test_a_429_is_retried_after_a_backoff_and_nothing_was_stored_under_the_key(stripe: FakeStripe) -> None:
    # Given Stripe's rate limiter refuses the first two tries (answered before the idempotency layer)
    stripe.inject("authorize", status=429, times=2)

    # When authorize is sent once, with time to spare
    intent = authorize(gateway(stripe.url), timeout=10)

    # Then the gateway retried within the call and the third try was executed, not a replayed 429
    assert intent.held
    assert [r["status"] for r in stripe.requests] == [429, 429, 200]
    assert stripe.count("authorized") == 1


def rate_limited(should_retry: str | None, retry_after: str | None = None) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {k: v for k, v in (("Stripe-Should-Retry", should_retry), ("Retry-After", retry_after)) if v}
        return httpx.Response(
            429, json={"error": {"type": "invalid_request_error", "code": "rate_limit"}}, headers=headers
        )

    return httpx.MockTransport(answer)


def test_a_429_that_stripe_says_not_to_retry_is_not_retried() -> None:
    waits: list[float] = []
    gw = StripePaymentGateway(
        "https://api.example", lambda: "sk", httpx.Client(transport=rate_limited("false")), sleep=waits.append
    )

    with pytest.raises(PaymentRateLimited):
        authorize(gw, timeout=10)

    assert waits == []


def test_a_429_waits_as_long_as_retry_after_says_and_never_past_the_deadline() -> None:
    waits: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    client = httpx.Client(transport=rate_limited("true", retry_after="2"))
    gw = StripePaymentGateway("https://api.example", lambda: "sk", client, sleep=sleep, monotonic=lambda: now[0])

    with pytest.raises(PaymentRateLimited):
        authorize(gw, timeout=7)

    assert waits == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("status", [424, 500, 503])
def test_424_and_5xx_are_an_answered_unknown_outcome(status: int) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": {"type": "api_error"}}))
    gw = StripePaymentGateway("https://api.example", lambda: "sk", httpx.Client(transport=transport))

    with pytest.raises(PaymentOutcomeUnknown) as unknown:
        authorize(gw)

    assert unknown.value.answered
    assert not isinstance(unknown.value, PaymentNotSent)


def test_a_key_still_in_use_is_in_progress_not_an_answer(stripe: FakeStripe) -> None:
    # Given a capture that is still running at the provider under its key
    gw = gateway(stripe.url)
    intent = authorize(gw)
    stripe.inject("capture", delay=1.5, times=1)
    first = threading.Thread(
        target=lambda: gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=3)
    )
    first.start()
    deadline = time.monotonic() + 5
    while stripe.in_flight == 0 and time.monotonic() < deadline:  # the first capture is running at the provider
        time.sleep(0.01)

    # When the same key is sent again meanwhile
    with pytest.raises(PaymentInProgress) as in_use:
        gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=2)
    first.join()

    # Then it is "still running": no answer that would allow a second key
    assert not in_use.value.answered
    assert stripe.count("captured") == 1


def test_every_request_pins_the_api_version_and_rules_out_redirects(stripe: FakeStripe) -> None:
    seen: list[httpx.Request] = []
    client = httpx.Client(event_hooks={"request": [seen.append]})
    gw = StripePaymentGateway(stripe.url, lambda: "sk_test_local", client)

    intent = authorize(gw)
    gw.retrieve(intent.id, timeout=2)

    assert {r.headers["Stripe-Version"] for r in seen} == {STRIPE_API_VERSION}
    form = dict(httpx.QueryParams(seen[0].content.decode()))
    assert form["automatic_payment_methods[enabled]"] == "true"
    assert form["automatic_payment_methods[allow_redirects]"] == "never"
    assert "return_url" not in form


def test_with_a_return_url_authorize_sends_it_instead(stripe: FakeStripe) -> None:
    gw = StripePaymentGateway(stripe.url, lambda: "sk_test_local", return_url="https://shop.example/return")

    intent = authorize(gw, method="pm_card_threeDSecure2Required")

    assert intent.needs_action
    assert intent.next_action is not None
    assert intent.next_action["type"] == "redirect_to_url"


def test_3d_secure_is_requires_action_with_a_client_secret_not_a_decline(stripe: FakeStripe) -> None:
    intent = authorize(gateway(stripe.url), method="pm_card_threeDSecure2Required")

    assert intent.needs_action
    assert not intent.held
    assert intent.client_secret
    assert intent.client_secret.startswith(intent.id)
    assert intent.next_action == {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}


def test_an_unknown_payment_method_is_rejected_naming_it(stripe: FakeStripe) -> None:
    with pytest.raises(PaymentRejected) as rejected:
        authorize(gateway(stripe.url), method="pm_nonexistent")

    assert (rejected.value.status, rejected.value.code, rejected.value.param) == (
        400,
        "resource_missing",
        "payment_method",
    )


def test_refunds_are_objects_listed_by_payment_intent(stripe: FakeStripe) -> None:
    gw = gateway(stripe.url)
    intent = authorize(gw)
    captured = gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=2)

    refund = gw.refund(intent.id, amount=1000, idempotency_key="ord_1:refund", timeout=2)

    assert "amount_refunded" not in stripe.intents[intent.id]
    assert refund.counts
    assert refund.amount == 1000
    assert [r.id for r in gw.list_refunds(intent.id, timeout=2)] == [refund.id]
    assert gw.retrieve(intent.id, timeout=2) == captured


@pytest.mark.parametrize(
    "body",
    [
        {"id": "pi_1", "status": None, "amount": None, "metadata": None, "amount_received": None, "currency": None},
        {"id": "pi_1", "status": "some_future_status", "next_action": None, "latest_charge": {"id": "ch_1"}},
    ],
)
def test_nulls_and_unknown_values_in_an_intent_are_read_not_a_crash(body: dict) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    gw = StripePaymentGateway("https://api.example", lambda: "sk", httpx.Client(transport=transport))

    intent = gw.retrieve("pi_1", timeout=2)

    assert intent.id == "pi_1"
    assert not (intent.held)
    assert not (intent.captured)
    assert not (intent.canceled)


def test_a_refund_with_a_null_status_is_read() -> None:
    body = {"object": "list", "data": [{"id": "re_1", "amount": 1000, "status": None, "payment_intent": "pi_1"}]}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    gw = StripePaymentGateway("https://api.example", lambda: "sk", httpx.Client(transport=transport))

    [refund] = gw.list_refunds("pi_1", timeout=2)

    assert refund.status is None
    assert refund.counts


def test_an_unreadable_success_is_an_unknown_outcome_not_a_crash() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"object": "payment_intent"}))
    gw = StripePaymentGateway("https://api.example", lambda: "sk", httpx.Client(transport=transport))

    with pytest.raises(PaymentOutcomeUnknown):
        gw.retrieve("pi_1", timeout=2)


def test_capturing_twice_is_already_done_with_the_intent(stripe: FakeStripe) -> None:
    gw = gateway(stripe.url)
    intent = authorize(gw)
    gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=2)

    with pytest.raises(PaymentUnexpectedState) as already:
        gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture:2", timeout=2)

    assert already.value.intent is not None
    assert already.value.intent.captured
    assert stripe.count("captured") == 1


def test_the_same_key_replays_the_first_answer(stripe: FakeStripe) -> None:
    gw = gateway(stripe.url)
    intent = authorize(gw)

    captured = gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=2)
    replayed = gw.capture(intent.id, amount=1000, idempotency_key="ord_1:capture", timeout=2)

    assert captured == replayed
    assert stripe.count("captured") == 1


def test_a_reused_key_with_other_parameters_is_rejected(stripe: FakeStripe) -> None:
    gw = gateway(stripe.url)
    authorize(gw)

    with pytest.raises(PaymentRejected) as rejected:
        gw.authorize(
            order_id="ord_1",
            amount=999,
            currency="usd",
            payment_method="pm_card_visa",
            idempotency_key="ord_1:authorize",
            timeout=2,
        )

    assert rejected.value.status == 400


def test_search_finds_the_order_by_metadata_once_the_index_caught_up(stripe: FakeStripe, clock: Clock) -> None:
    gw = gateway(stripe.url)
    intent = authorize(gw)
    assert gw.search_by_order("ord_1", timeout=2) == []  # search is not read-after-write

    clock.advance(stripe.search_lag_seconds)

    assert [i.id for i in gw.search_by_order("ord_1", timeout=2)] == [intent.id]
    assert gw.search_by_order("ord_other", timeout=2) == []
