"""The payment gateway sorts every answer: declined, not sent, outcome unknown, already done, rejected."""

from __future__ import annotations

import time

import pytest

from checkout.payments import (
    PaymentDeclined,
    PaymentNotSent,
    PaymentOutcomeUnknown,
    PaymentRejected,
    PaymentUnexpectedState,
    StripePaymentGateway,
)
from local.fake_payment import FakeStripe
from tests.conftest import unused_port


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


def test_rate_limited_is_not_sent(stripe: FakeStripe) -> None:
    stripe.inject("authorize", status=429)

    with pytest.raises(PaymentNotSent):
        authorize(gateway(stripe.url))


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


def test_search_finds_the_order_by_metadata(stripe: FakeStripe) -> None:
    gw = gateway(stripe.url)
    intent = authorize(gw)

    assert [i.id for i in gw.search_by_order("ord_1", timeout=2)] == [intent.id]
    assert gw.search_by_order("ord_other", timeout=2) == []
