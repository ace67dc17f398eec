"""Bad input over real HTTP, through the local front as API Gateway would pass it: a clear JSON 4xx, nothing written."""

from __future__ import annotations

import httpx
import pytest

from local.demo import LocalApi
from local.stack_process import StackProcess

pytestmark = pytest.mark.e2e

CART = b'{"customer_id": "cus_1", "currency": "usd", "items": [{"sku": "sku_mug", "quantity": 1, "unit_amount": 100}]}'


def written(api: LocalApi) -> tuple[int, int]:
    """Orders, and reservations asked of the warehouse (a session is opened only after one); the workers running
    in the background move orders but never create one, and never reserve."""
    reservations = [r for r in api.provider_log("warehouse")["requests"] if r.get("path") == "/v1/reservations"]
    return len(api.all_orders()), len(reservations)


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "error"),
    [
        ("POST", "/checkout/sessions", {"Content-Type": "text/plain"}, CART, 415, "unsupported_media_type"),
        ("POST", "/checkout/sessions", {"Content-Type": "multipart/form-data"}, CART, 415, "unsupported_media_type"),
        (
            "POST",
            "/checkout/sessions",
            {"Content-Type": "application/octet-stream"},
            CART,
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/checkout/sessions",
            {"Content-Type": "application/json"},
            b'{"customer_id": "\xff"}',
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/checkout/sessions",
            {"Content-Type": "application/json"},
            b"[" + CART + b"]",
            422,
            "validation_error",
        ),
        ("POST", "/checkout/sessions/", {"Content-Type": "application/json"}, CART, 404, "not_found"),
        ("POST", "/checkout//sessions", {"Content-Type": "application/json"}, CART, 404, "not_found"),
        ("GET", "/orders/ord%00x", {"X-Customer-ID": "cus_1"}, b"", 422, "validation_error"),
        ("TRACE", "/checkout/sessions", {}, b"", 404, "not_found"),
        ("QUERY", "/orders/ord_1", {}, b"", 404, "not_found"),
        ("GET", "/checkout/sessions", {}, b"", 404, "not_found"),
    ],
)
def test_bad_request_gets_its_json_error_and_writes_nothing(
    local_stack: StackProcess,
    local_api: LocalApi,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    error: str,
) -> None:
    before = written(local_api)

    response = httpx.request(method, f"{local_stack.url}{path}", headers=headers, content=body or None)

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error
    assert response.json()["message"]
    assert written(local_api) == before
