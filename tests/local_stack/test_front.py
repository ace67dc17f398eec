"""The HTTP front serves the template's HttpApi routes as API Gateway HTTP API (payload 2.0) would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from local.front import Front, find_route, http_routes
from local.lambdas import InvocationLog, LocalClock, discover_functions
from local.template_stack import TemplateStack
from tests.apigw import SAMPLE


class Control:
    """The stack's side of /_local/, reduced to what these tests look at."""

    def __init__(self) -> None:
        self.clock = LocalClock()

    def describe(self) -> dict[str, Any]:
        return {"api": "here"}

    def list_functions(self) -> list[dict[str, Any]]:
        return []

    def run(self, name: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": "function_not_found", "message": name}

    def advance_clock(self, advance_seconds: float | None) -> dict[str, Any]:
        if advance_seconds is not None:
            self.clock.advance(advance_seconds)
        return {"offset_seconds": self.clock.offset}


@pytest.fixture
def received() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def front(received: list[dict[str, Any]]) -> Iterator[Front]:
    stack = TemplateStack()
    functions = discover_functions(stack)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        received.append(event)
        if event["rawPath"] == "/orders/boom":
            raise RuntimeError("handler crashed")
        return {"statusCode": 201, "headers": {"X-Echo": "yes"}, "body": json.dumps({"route": event["routeKey"]})}

    for function in functions.values():
        function.handler = handler
    server = Front(0, http_routes(stack, functions), Control(), InvocationLog(), account=stack.account).start()
    try:
        yield server
    finally:
        server.stop()


def test_every_template_route_is_served_and_iam_routes_are_marked() -> None:
    stack = TemplateStack()
    routes = {r.route_key: r for r in http_routes(stack, discover_functions(stack))}

    assert {"POST /checkout/sessions", "POST /checkout/confirm", "GET /orders/{order_id}"} <= set(routes)
    assert routes["POST /checkout/sessions"].iam
    assert not routes["POST /checkout/confirm"].iam
    found = find_route(list(routes.values()), "GET", "/orders/ord_1")
    assert found is not None
    assert found[1] == {"order_id": "ord_1"}
    assert find_route(list(routes.values()), "DELETE", "/orders/ord_1") is None


def test_a_request_becomes_a_payload_2_event_and_the_answer_becomes_http(
    front: Front, received: list[dict[str, Any]]
) -> None:
    response = httpx.post(
        f"{front.url}/checkout/sessions?a=1&a=2",
        json={"customer_id": "cus_1"},
        headers={"X-Customer-ID": "cus_1", "Cookie": "k=v"},
    )

    assert response.status_code == 201
    assert response.headers["x-echo"] == "yes"
    assert response.json() == {"route": "POST /checkout/sessions"}
    (event,) = received
    assert set(SAMPLE) - {"body", "pathParameters", "queryStringParameters", "cookies"} <= set(event)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /checkout/sessions"
    assert event["rawPath"] == "/checkout/sessions"
    assert event["queryStringParameters"] == {"a": "1,2"}
    assert event["cookies"] == ["k=v"]
    assert event["headers"]["x-customer-id"] == "cus_1"
    assert json.loads(event["body"]) == {"customer_id": "cus_1"}
    assert event["requestContext"]["http"]["method"] == "POST"
    # AWS_IAM is not enforced locally: the route sees a fixed local identity.
    assert event["requestContext"]["authorizer"]["iam"]["userArn"].endswith(":user/local-developer")


def test_path_parameters_reach_the_handler(front: Front, received: list[dict[str, Any]]) -> None:
    httpx.get(f"{front.url}/orders/ord_42")

    assert received[0]["pathParameters"] == {"order_id": "ord_42"}
    assert "authorizer" not in received[0]["requestContext"]


def test_a_crashing_handler_is_a_500_json_error_and_an_unknown_route_a_404(front: Front) -> None:
    crashed = httpx.get(f"{front.url}/orders/boom")
    missing = httpx.get(f"{front.url}/nowhere")

    assert crashed.status_code == 500
    assert crashed.json()["error"] == "internal_error"
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


def test_the_local_clock_moves_forward_only(front: Front) -> None:
    moved = httpx.post(f"{front.url}/_local/clock", json={"advance_seconds": 120})
    backwards = httpx.post(f"{front.url}/_local/clock", json={"advance_seconds": -5})
    malformed = httpx.post(f"{front.url}/_local/clock", json={"seconds": 5})

    assert moved.json()["offset_seconds"] == 120
    assert backwards.status_code == 422
    assert malformed.status_code == 422
    assert malformed.json()["error"] == "validation_error"
