"""Every bad input gets a clear 4xx JSON error, writes nothing and calls no provider."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ApiResponse
from tests.integration.test_confirm import CART, open_session
from tests.invariants import scan

Api = Callable[..., ApiResponse]


def good_cart(**overrides: Any) -> dict[str, Any]:
    return {"customer_id": "cus_1", "payment_method": "pm_card_visa", **CART, **overrides}


def assert_refused(response: ApiResponse, status: int, error: str) -> None:
    assert response.status == status, response.body
    assert response.body["error"] == error
    assert isinstance(response.body["message"], str)
    assert response.body["message"]
    assert response.headers["Content-Type"] == "application/json"


@pytest.fixture
def nothing_written(stack, stripe, warehouse):
    """Snapshots every table and both providers' request logs; afterwards nothing may have changed."""
    before = {t: scan(stack, t) for t in ("OrdersTable", "FailedCompensationsTable")}
    stripe_requests, warehouse_requests = len(stripe.requests), len(warehouse.requests)
    yield
    assert {t: scan(stack, t) for t in before} == before
    assert len(stripe.requests) == stripe_requests
    assert len(warehouse.requests) == warehouse_requests


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (good_cart(items=[{"sku": "sku_mug", "quantity": 0, "unit_amount": 100}]), "zero quantity"),
        (good_cart(items=[{"sku": "sku_mug", "quantity": -1, "unit_amount": 100}]), "negative quantity"),
        (good_cart(items=[{"sku": "sku_mug", "quantity": 1, "unit_amount": -5}]), "negative price"),
        (good_cart(items=[]), "no items"),
        (good_cart(currency="xyz"), "unknown currency"),
        (good_cart(currency="USD"), "uppercase currency"),
        (good_cart(items=[{"sku": "sku_mug", "quantity": 1, "unit_amount": 0}]), "zero total"),
        ({k: v for k, v in good_cart().items() if k != "customer_id"}, "missing customer"),
        (good_cart(surprise=True), "unknown field"),
        (good_cart(items=[{"sku": "sku_mug", "quantity": "two", "unit_amount": 100}]), "quantity not a number"),
    ],
)
def test_bad_session_body_is_422(api: Api, nothing_written, body: dict[str, Any], why: str) -> None:
    response = api("POST", "/checkout/sessions", body=body, iam=True)

    assert_refused(response, 422, "validation_error")


def test_malformed_json_is_422(api: Api, nothing_written) -> None:
    response = api("POST", "/checkout/sessions", raw_body='{"customer_id": "cus_1", "items": [', iam=True)

    assert_refused(response, 422, "validation_error")


def test_unknown_currency_message_names_the_field(api: Api, nothing_written) -> None:
    response = api("POST", "/checkout/sessions", body=good_cart(currency="xyz"), iam=True)

    assert "currency" in response.body["message"]


def test_oversized_session_body_is_413(api: Api, nothing_written) -> None:
    items = [{"sku": f"sku_{i:05d}" + "x" * 50, "quantity": 1, "unit_amount": 100} for i in range(1200)]

    response = api("POST", "/checkout/sessions", body=good_cart(items=items), iam=True)

    assert_refused(response, 413, "payload_too_large")


def test_oversized_base64_body_is_413(api: Api, runtime, nothing_written) -> None:
    from functions.confirm_checkout.app import lambda_handler
    from tests.apigw import http_event
    from tests.conftest import LambdaContext

    event = http_event("POST", "/checkout/confirm", headers={"X-Session-ID": "cs_1", "X-Customer-ID": "cus_1"})
    event["body"] = base64.b64encode(b"{" + b" " * 70_000 + b"}").decode()
    event["isBase64Encoded"] = True

    result = lambda_handler(event, LambdaContext())

    assert result["statusCode"] == 413
    assert json.loads(result["body"])["error"] == "payload_too_large"


@pytest.mark.parametrize("missing", ["X-Session-ID", "X-Customer-ID"])
def test_confirm_without_a_required_header_is_422(api: Api, nothing_written, missing: str) -> None:
    headers = {"X-Session-ID": "cs_1", "X-Customer-ID": "cus_1"}
    del headers[missing]

    response = api("POST", "/checkout/confirm", headers=headers)

    assert_refused(response, 422, "validation_error")
    assert missing.lower() in response.body["message"]


def test_confirm_with_malformed_json_is_422_and_nothing_written(api: Api, stack, stripe, warehouse) -> None:
    session = open_session(api)
    with_session = {"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_1"}
    before = scan(stack, "OrdersTable")
    calls = len(stripe.requests)

    response = api("POST", "/checkout/confirm", headers=with_session, raw_body="{not json")

    assert_refused(response, 422, "validation_error")
    assert scan(stack, "OrdersTable") == before
    assert len(stripe.requests) == calls


def test_confirm_with_oversized_body_is_413_and_nothing_written(api: Api, stack, stripe) -> None:
    session = open_session(api)
    before = scan(stack, "OrdersTable")

    response = api(
        "POST",
        "/checkout/confirm",
        headers={"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_1"},
        body={"payment_method": "p" * (65 * 1024)},
    )

    assert_refused(response, 413, "payload_too_large")
    assert scan(stack, "OrdersTable") == before
    assert stripe.requests == []


def test_confirm_without_any_payment_method_is_422(api: Api, stack, stripe) -> None:
    session = open_session(api, payment_method=None)

    response = api(
        "POST", "/checkout/confirm", headers={"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_1"}
    )

    assert_refused(response, 422, "validation_error")
    assert [o for o in scan(stack, "OrdersTable") if o.get("kind") == "order"] == []
    assert stripe.requests == []


def test_out_of_stock_is_409_and_no_session(api: Api, stack, warehouse) -> None:
    warehouse.set_stock("sku_mug", 1)

    response = api("POST", "/checkout/sessions", body=good_cart(), iam=True)

    assert_refused(response, 409, "out_of_stock")
    assert response.body["sku"] == "sku_mug"
    assert scan(stack, "OrdersTable") == []


@pytest.mark.parametrize(("fault", "status"), [({"status": 503}, 503), ({"delay": 3}, 504)])
def test_warehouse_down_is_503_or_504_and_no_session(
    make_runtime, api: Api, stack, warehouse, fault: dict[str, Any], status: int
) -> None:
    warehouse.inject("reserve", **fault)
    make_runtime(settings={"WAREHOUSE_TIMEOUT_SECONDS": 1})

    response = api("POST", "/checkout/sessions", body=good_cart(), iam=True)

    assert_refused(response, status, "warehouse_unavailable")
    assert scan(stack, "OrdersTable") == []
