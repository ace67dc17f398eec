"""The fake Stripe's latest_charge: a string id unless expanded, the capture deadline, and its strict expand."""

from collections.abc import Iterator

import httpx
import pytest

from local.fake_payment import CAPTURE_WINDOW_SECONDS, FakeStripe
from tests.fakes.test_fake_payment import authorize, authorized_intent_id


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def client(stripe: FakeStripe) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stripe.url, headers={"Authorization": "Bearer sk_test_fake"}, timeout=5) as http:
        yield http


def test_an_authorized_intent_names_its_charge_and_expanding_it_gives_the_capture_deadline(client: httpx.Client):
    intent_id = authorized_intent_id(client)

    plain = client.get(f"/v1/payment_intents/{intent_id}").json()
    expanded = client.get(f"/v1/payment_intents/{intent_id}", params={"expand[]": "latest_charge"}).json()

    assert isinstance(plain["latest_charge"], str)
    assert plain["latest_charge"].startswith("ch_")
    charge = expanded["latest_charge"]
    assert charge["id"] == plain["latest_charge"]
    assert charge["payment_intent"] == intent_id
    assert charge["captured"] is False
    assert charge["status"] == "succeeded"
    card = charge["payment_method_details"]["card"]
    assert card["capture_before"] == plain["created"] + CAPTURE_WINDOW_SECONDS


def test_capture_and_cancel_show_on_the_charge(client: httpx.Client):
    captured = authorized_intent_id(client, "order-1")
    cancelled = authorized_intent_id(client, "order-2")
    client.post(f"/v1/payment_intents/{captured}/capture", headers={"Idempotency-Key": "c1"})
    client.post(f"/v1/payment_intents/{cancelled}/cancel", headers={"Idempotency-Key": "v1"})

    def charge(intent_id: str) -> dict:
        return client.get(f"/v1/payment_intents/{intent_id}", params={"expand[]": "latest_charge"}).json()[
            "latest_charge"
        ]

    assert charge(captured)["captured"] is True
    assert charge(captured)["amount_captured"] == 1500
    assert charge(cancelled)["refunded"] is True
    assert charge(cancelled)["amount_refunded"] == 1500


def test_a_declined_confirm_leaves_a_failed_charge_with_no_deadline(client: httpx.Client):
    declined = authorize(client, payment_method="pm_card_chargeDeclined").json()["error"]["payment_intent"]

    charge = client.get(f"/v1/payment_intents/{declined['id']}", params={"expand[]": "latest_charge"}).json()[
        "latest_charge"
    ]

    assert charge["status"] == "failed"
    assert charge["payment_method_details"]["card"]["capture_before"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"expand[]": "customer.invoice_settings"}, "cannot be expanded"),
        ({"limit": "3"}, "unknown parameter"),
    ],
)
def test_retrieve_refuses_what_stripe_refuses(client: httpx.Client, params: dict, message: str):
    intent_id = authorized_intent_id(client)

    answer = client.get(f"/v1/payment_intents/{intent_id}", params=params)

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert message in answer.json()["error"]["message"]
