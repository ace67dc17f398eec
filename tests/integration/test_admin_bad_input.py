"""The admin API refuses bad input as the checkout API does: a clear 4xx JSON error, nothing changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ApiResponse
from tests.integration.test_bad_input import assert_refused
from tests.invariants import scan

Admin = Callable[..., ApiResponse]


@pytest.fixture
def nothing_changed(stack, stripe, warehouse):
    before = {t: scan(stack, t) for t in ("OrdersTable", "FailedCompensationsTable")}
    yield
    assert {t: scan(stack, t) for t in before} == before
    assert stripe.requests == []
    assert warehouse.requests == []


@pytest.mark.parametrize(
    ("raw", "headers", "status", "error"),
    [
        ("[]", {}, 422, "validation_error"),
        ('"fixed it"', {}, 422, "validation_error"),
        ('{"note": "a", "note": "b"}', {}, 422, "validation_error"),
        ('{"note": "   "}', {}, 422, "validation_error"),
        ('{"note": "voided"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ('{"note": "voided"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ],
)
def test_bad_resolve_body_is_refused(
    admin: Admin, nothing_changed, raw: str, headers: dict[str, str], status: int, error: str
) -> None:
    response = admin("POST", "/admin/compensations/fc_ord_1_void_authorization/resolve", raw_body=raw, headers=headers)

    assert_refused(response, status, error)


@pytest.mark.parametrize("encoded", ["fc%00", "fc%2F1", "fc%E2%80%AE", "fc%20x"])
def test_compensation_id_outside_its_character_set_is_422(admin: Admin, nothing_changed, encoded: str) -> None:
    response = admin("GET", f"/admin/compensations/{encoded}")

    assert_refused(response, 422, "validation_error")


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/admin/compensations/", 404, "not_found"),
        ("GET", "/admin//compensations", 404, "not_found"),
        ("GET", "/admin/nothing", 404, "not_found"),
        ("DELETE", "/admin/compensations/fc_1", 405, "method_not_allowed"),
        ("GET", "/admin/compensations/fc_1/retry", 405, "method_not_allowed"),
    ],
)
def test_unknown_admin_route_is_a_json_404_or_405(
    admin: Admin, nothing_changed, method: str, path: str, status: int, error: str
) -> None:
    response = admin(method, path)

    assert_refused(response, status, error)


def test_not_utf8_admin_body_is_400(runtime, nothing_changed) -> None:
    import base64

    from functions.admin.app import lambda_handler
    from tests.apigw import http_event
    from tests.conftest import LambdaContext

    event: dict[str, Any] = http_event("POST", "/admin/compensations/fc_1/resolve", iam=True)
    event["headers"]["content-type"] = "application/json"
    event["body"] = base64.b64encode(b'{"note": "\xff"}').decode()
    event["isBase64Encoded"] = True

    result = lambda_handler(event, LambdaContext(function_name="checkout-local-admin"))

    assert result["statusCode"] == 400
    assert json.loads(result["body"])["error"] == "invalid_body"


@pytest.mark.parametrize("note", ["\x1f", "\u00a0 \t", "\ufeff", "voided\x00", "void\u202eed", "\x85"])
def test_resolve_note_that_is_blank_or_has_control_characters_is_422(admin: Admin, nothing_changed, note: str) -> None:
    response = admin("POST", "/admin/compensations/fc_ord_1_void_authorization/resolve", body={"note": note})

    assert_refused(response, 422, "validation_error")
    assert response.body["message"].startswith("note: must be text with at least one visible character")
