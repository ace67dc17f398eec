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


# Issue 11: strict parsing. Every case below is refused with its 4xx JSON error, writes nothing, calls no provider.
def with_item(**fields: Any) -> dict[str, Any]:
    return good_cart(items=[{"sku": "sku_mug", "quantity": 1, "unit_amount": 100, **fields}])


HOSTILE_TEXT = {
    "NUL": "cus\x00_1",
    "control character": "cus\x1b[2J",
    "right-to-left override": "cus_\u202e1",
    "non-ASCII": "cüs_1",
    "space": "cus 1",
    "empty": "",
}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (with_item(quantity="1"), "quantity as a string"),
        (with_item(quantity=True), "quantity as a boolean"),
        (with_item(quantity=1.5), "quantity with a fraction"),
        (with_item(quantity=None), "quantity null"),
        (with_item(unit_amount="100"), "unit_amount as a string"),
        (with_item(quantity=1001), "quantity above 1000"),
        (with_item(unit_amount=100_000_000), "unit_amount of 9 digits"),
        (good_cart(items=[{"sku": "sku_mug", "quantity": 1, "unit_amount": 100}] * 101), "more than 100 lines"),
        (good_cart(customer_id="c" * 129), "customer_id too long"),
        (good_cart(currency=1), "currency as a number"),
        *[(good_cart(customer_id=text), f"customer_id with {name}") for name, text in HOSTILE_TEXT.items()],
        *[(with_item(sku=text), f"sku with {name}") for name, text in HOSTILE_TEXT.items()],
        *[(good_cart(payment_method=text), f"payment_method with {name}") for name, text in HOSTILE_TEXT.items()],
    ],
)
def test_session_body_that_is_not_strictly_valid_is_422(api: Api, nothing_written, body: dict[str, Any], why: str):
    response = api("POST", "/checkout/sessions", body=body, iam=True)

    assert_refused(response, 422, "validation_error")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (json.dumps([good_cart()]), "an array of the right object"),
        ("[]", "an empty array"),
        ('"a string"', "a string"),
        ("42", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
        ('{"customer_id": "cus_1", "customer_id": "cus_2"}', "a duplicate key"),
        (json.dumps(good_cart())[:-1] + ', "x": NaN}', "NaN"),
        ("[" * 5000 + "]" * 5000, "nesting deeper than the parser goes"),
    ],
)
def test_session_body_that_is_not_one_json_object_is_422(api: Api, nothing_written, raw: str, why: str) -> None:
    response = api("POST", "/checkout/sessions", raw_body=raw, iam=True)

    assert_refused(response, 422, "validation_error")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
@pytest.mark.parametrize("path", ["/checkout/sessions", "/checkout/confirm"])
def test_body_of_another_content_type_is_415(api: Api, nothing_written, content_type: str, path: str) -> None:
    headers = {"Content-Type": content_type, "X-Session-ID": "cs_1", "X-Customer-ID": "cus_1"}

    response = api("POST", path, raw_body=json.dumps(good_cart()), headers=headers, iam=True)

    assert_refused(response, 415, "unsupported_media_type")


def test_json_with_its_utf8_charset_is_read(api: Api, stack) -> None:
    headers = {"Content-Type": "Application/JSON; charset=UTF-8"}

    response = api("POST", "/checkout/sessions", raw_body=json.dumps(good_cart()), headers=headers, iam=True)

    assert response.status == 201, response.body


def _binary_event(path: str, data: bytes, content_type: str) -> dict[str, Any]:
    from tests.apigw import http_event

    event = http_event("POST", path, headers={"X-Session-ID": "cs_1", "X-Customer-ID": "cus_1"}, iam=True)
    event["headers"]["content-type"] = content_type
    event["body"] = base64.b64encode(data).decode()
    event["isBase64Encoded"] = True
    return event


@pytest.mark.parametrize("path", ["/checkout/sessions", "/checkout/confirm"])
def test_body_that_is_not_utf8_is_400(runtime, nothing_written, path: str) -> None:
    from functions.confirm_checkout.app import lambda_handler
    from tests.conftest import LambdaContext

    event = _binary_event(path, b'{"customer_id": "cus_\xff\xfe"}', "application/json")

    result = lambda_handler(event, LambdaContext())

    assert result["statusCode"] == 400
    assert json.loads(result["body"])["error"] == "invalid_body"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/checkout/sessions/"),
        ("POST", "/checkout//sessions"),
        ("POST", "//checkout/sessions"),
        ("POST", "/checkout/confirm/"),
        ("GET", "/orders/ord_1/"),
        ("GET", "/orders//ord_1"),
        ("GET", "/nowhere"),
        ("GET", "/"),
    ],
)
def test_unknown_path_is_a_json_404(api: Api, nothing_written, method: str, path: str) -> None:
    response = api(method, path, body=good_cart() if method == "POST" else None, iam=True)

    assert_refused(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/checkout/sessions", "POST"),
        ("DELETE", "/checkout/confirm", "POST"),
        ("PUT", "/orders/ord_1", "GET"),
    ],
)
def test_known_path_with_another_method_is_a_json_405(
    api: Api, nothing_written, method: str, path: str, allowed: str
) -> None:
    response = api(method, path, headers={"X-Customer-ID": "cus_1"})

    assert_refused(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allowed


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Customer-ID", "cus\x01"),
        ("X-Customer-ID", "cüs"),
        ("X-Customer-ID", "c" * 129),
        ("X-Session-ID", "cs_1\u202e"),
        ("X-Session-ID", "cs/1"),
        ("X-Session-ID", "cs 1"),
        ("X-Session-ID", ""),
        ("Idempotency-Key", "k" * 256),
        ("Idempotency-Key", "key\x7f"),
    ],
)
def test_confirm_header_outside_its_character_set_is_422(api: Api, stack, stripe, header: str, value: str) -> None:
    session = open_session(api)
    headers = {"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_1", header: value}
    before = scan(stack, "OrdersTable")

    response = api("POST", "/checkout/confirm", headers=headers)

    assert_refused(response, 422, "validation_error")
    assert header.lower() in response.body["message"]
    assert scan(stack, "OrdersTable") == before
    assert stripe.requests == []


@pytest.mark.parametrize("raw", ["[]", '"pm_card_visa"', "null", '{"payment_method": "pm card"}'])
def test_confirm_body_that_is_not_a_valid_object_is_422(api: Api, stack, stripe, raw: str) -> None:
    session = open_session(api)
    before = scan(stack, "OrdersTable")

    response = api(
        "POST",
        "/checkout/confirm",
        headers={"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_1"},
        raw_body=raw,
    )

    assert_refused(response, 422, "validation_error")
    assert scan(stack, "OrdersTable") == before
    assert stripe.requests == []


def test_order_id_in_the_path_is_percent_decoded(api: Api, stack) -> None:
    from tests.integration.test_confirm import confirm

    session = open_session(api)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    encoded = "".join(f"%{ord(c):02X}" for c in order_id)

    response = api("GET", f"/orders/{encoded}", headers={"X-Customer-ID": "cus_1"})

    assert response.status == 200, response.body
    assert response.body["order_id"] == order_id


@pytest.mark.parametrize("encoded", ["ord%00", "ord%2F1", "ord%E2%80%AE1", "ord%FF", "ord%201"])
def test_order_id_that_decodes_outside_its_character_set_is_422(api: Api, nothing_written, encoded: str) -> None:
    response = api("GET", f"/orders/{encoded}", headers={"X-Customer-ID": "cus_1"})

    assert_refused(response, 422, "validation_error")


def test_jwt_sub_is_the_customer_and_wins_over_the_header(api: Api, stack) -> None:
    from functions.confirm_checkout.app import lambda_handler
    from tests.apigw import http_event
    from tests.conftest import LambdaContext

    session = open_session(api, customer="user-sub-1")
    event = http_event(
        "POST", "/checkout/confirm", headers={"X-Session-ID": session["session_id"], "X-Customer-ID": "cus_other"}
    )
    event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": "user-sub-1"}, "scopes": None}}

    result = lambda_handler(event, LambdaContext())

    assert result["statusCode"] == 201, result["body"]


def test_confirm_without_jwt_or_customer_header_is_422(api: Api, nothing_written) -> None:
    response = api("POST", "/checkout/confirm", headers={"X-Session-ID": "cs_1"})

    assert_refused(response, 422, "validation_error")
    assert "x-customer-id" in response.body["message"]
