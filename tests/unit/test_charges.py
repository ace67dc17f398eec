"""Every PaymentIntent status means one thing to the saga (docs.stripe.com/payments/paymentintents/lifecycle)."""

from __future__ import annotations

from typing import Any

import pytest

from checkout.charges import Charges, Outcome
from checkout.deadline import Deadline
from checkout.payments import Intent


class OneIntent:
    """A gateway whose every read answers one intent in one status."""

    def __init__(self, status: str | None) -> None:
        self.status = status

    def retrieve(self, intent_id: str, *, timeout: float) -> Intent:
        return Intent.model_validate({"id": intent_id, "status": self.status, "amount": 1000})

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} must not be called to read an intent")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("requires_capture", Outcome.AUTHORIZED),
        ("succeeded", Outcome.AUTHORIZED),
        ("requires_action", Outcome.ACTION_REQUIRED),
        ("requires_confirmation", Outcome.ACTION_REQUIRED),
        ("requires_payment_method", Outcome.DECLINED),
        ("canceled", Outcome.NOTHING_HELD),
        ("processing", Outcome.UNKNOWN),
        ("a_status_added_later", Outcome.UNKNOWN),
        (None, Outcome.UNKNOWN),
    ],
)
def test_every_intent_status_has_one_meaning(status: str | None, outcome: Outcome) -> None:
    charges = Charges(OneIntent(status), payment_timeout=2)  # type: ignore[arg-type]

    result = charges.read_authorization("pi_1", Deadline.after(10))

    assert result.outcome is outcome
    # What the intent is stays known, so recovery can cancel it whatever its status
    assert result.intent is not None
    assert result.intent.id == "pi_1"
