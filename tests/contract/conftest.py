"""The contract suite's provider: the local fake always, Stripe's test mode when STRIPE_TEST_SECRET_KEY is set.

Each test states one behaviour of Stripe's API that the saga relies on (ARCHITECTURE.md section 6,
../shared/design/stripe-facts.md). Behaviours only the fake can stage (a completed 3-D Secure challenge, an
injected 429, a clock moved a day on) are marked `fake_only` and skipped against Stripe, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from checkout.payments import STRIPE_API_VERSION
from local.fake_payment import FakeStripe
from tests.conftest import Clock

STRIPE_KEY_VARIABLE = "STRIPE_TEST_SECRET_KEY"


@dataclass
class Provider:
    """Raw HTTP to one Stripe (real or fake), as the gateway speaks it: form bodies, Bearer key, pinned version."""

    name: str
    http: httpx.Client
    fake: FakeStripe | None = None
    clock: Clock | None = None

    def post(self, path: str, data: dict[str, str], *, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.http.post(path, data=data, headers=headers)

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def authorize(
        self, *, payment_method: str = "pm_card_visa", key: str | None = None, **extra: str
    ) -> httpx.Response:
        return self.post("/v1/payment_intents", authorize_form(payment_method=payment_method, **extra), key=key)


def authorize_form(*, payment_method: str = "pm_card_visa", redirects: bool = False, **extra: str) -> dict[str, str]:
    """What the gateway sends: confirm at creation, manual capture, redirects ruled out unless asked for."""
    form = {
        "amount": "2000",
        "currency": "usd",
        "payment_method": payment_method,
        "confirm": "true",
        "capture_method": "manual",
        "metadata[order_id]": f"ord_contract_{uuid.uuid4().hex}",
    }
    if not redirects:
        form["automatic_payment_methods[enabled]"] = "true"
        form["automatic_payment_methods[allow_redirects]"] = "never"
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def _real_stripe_reason() -> str | None:
    if os.environ.get("CI"):
        return "never against Stripe in CI"
    if not os.environ.get(STRIPE_KEY_VARIABLE):
        return f"set {STRIPE_KEY_VARIABLE} (an sk_test_ key) to run the contract suite against Stripe's test mode"
    if not os.environ[STRIPE_KEY_VARIABLE].startswith("sk_test_"):
        return f"{STRIPE_KEY_VARIABLE} must be a test-mode key (sk_test_...)"
    return None


@pytest.fixture(
    params=[
        "fake",
        pytest.param(
            "stripe", marks=pytest.mark.skipif(_real_stripe_reason() is not None, reason=str(_real_stripe_reason()))
        ),
    ]
)
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    headers = {"Stripe-Version": STRIPE_API_VERSION}
    if request.param == "fake":
        if request.node.get_closest_marker("real_only"):
            pytest.skip("states what only real Stripe shows")
        clock = Clock()
        with FakeStripe(clock=clock) as fake:
            headers["Authorization"] = "Bearer sk_test_contract"
            with httpx.Client(base_url=fake.url, headers=headers, timeout=10) as http:
                yield Provider("fake", http, fake=fake, clock=clock)
        return
    marker = request.node.get_closest_marker("fake_only")
    if marker is not None:
        pytest.skip(f"only the fake can stage this: {marker.args[0] if marker.args else 'a test-only hook'}")
    headers["Authorization"] = f"Bearer {os.environ[STRIPE_KEY_VARIABLE]}"
    with httpx.Client(base_url="https://api.stripe.com", headers=headers, timeout=30) as http:
        yield Provider("stripe", http)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fake_only(why): a behaviour only the fake can stage; skipped against Stripe")
    config.addinivalue_line("markers", "real_only: runs only against Stripe's test mode")
