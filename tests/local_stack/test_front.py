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
from tests.local_stack.functions import local_function


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


@pytest.mark.parametrize(
    "body",
    [
        '{"advance_seconds": NaN}',
        '{"advance_seconds": Infinity}',
        '{"advance_seconds": "NaN"}',
        '{"advance_seconds": "120"}',
        '{"advance_seconds": true}',
        '{"advance_seconds": 1e300}',
        '{"advance_seconds": -1}',
        "[120]",
        "not json",
    ],
)
def test_a_clock_move_that_is_not_a_finite_forward_number_is_a_422_and_moves_nothing(front: Front, body: str) -> None:
    # When
    refused = httpx.post(f"{front.url}/_local/clock", content=body, headers={"Content-Type": "application/json"})
    after = httpx.get(f"{front.url}/_local/clock")
    moved = httpx.post(f"{front.url}/_local/clock", json={"advance_seconds": 5})

    # Then the clock did not move, and the front still answers (no poisoned offset)
    assert refused.status_code == 422
    assert refused.json()["error"] == "validation_error"
    assert after.json()["offset_seconds"] == 0
    assert moved.json()["offset_seconds"] == 5


def test_the_fronts_own_refusals_are_json_not_html(front: Front) -> None:
    # When a URI longer than http.server reads (longer than httpx sends: raw bytes), and a method it has no
    # handler for, are sent
    import socket

    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        raw.sendall(b"GET /orders/" + b"x" * 70000 + b" HTTP/1.1\r\nHost: local\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    unknown_method = httpx.request("BREW", f"{front.url}/orders/ord_1")

    # Then both are JSON errors in the API's shape
    assert head.startswith(b"HTTP/1.1 414 ")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"] == "request_uri_too_long"
    assert unknown_method.status_code == 501
    assert unknown_method.json() == {"error": "not_implemented", "message": "Unsupported method ('BREW')"}


def test_a_run_past_its_timeout_is_logged_as_timed_out_while_it_still_runs() -> None:
    # Given a function whose template Timeout is 0.2 s and whose handler takes 0.6 s
    import io
    import threading
    import time

    out = io.StringIO()
    log = InvocationLog(out)
    release = threading.Event()
    function = local_function(
        "Slow", timeout_seconds=0.2, handler=lambda event, context: release.wait(5), on_timeout=log.timed_out
    )

    # When it runs
    runner = threading.Thread(target=lambda: setattr(function, "last", function.invoke({})))
    runner.start()
    time.sleep(0.5)
    logged_while_running = out.getvalue()
    release.set()
    runner.join()
    invocation = function.last  # type: ignore[attr-defined]
    log.line(function, "schedule", "ok", invocation)

    # Then Lambda's "Task timed out" is logged before it returns, and its result line says it timed out
    assert "SlowFunction" in logged_while_running
    assert "Task timed out after 0.20 seconds" in logged_while_running
    assert invocation.timed_out
    assert not invocation.ok
    assert "exceeded its 0.2 s Timeout" in out.getvalue().splitlines()[-1]


def test_concurrent_invocations_run_in_separate_environments_as_on_lambda(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a function whose handler keeps per-request state in a module global (as Powertools' resolver does)
    import threading

    (tmp_path / "envprobe.py").write_text(
        "import threading, time\n"
        "current = None\n"
        "def handler(event, context):\n"
        "    global current\n"
        "    current = event['n']\n"
        "    time.sleep(0.3)\n"
        "    return {'n': event['n'], 'saw': current, 'module': id(globals())}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    function = local_function("Probe", module="envprobe", attribute="handler", timeout_seconds=5).load()

    # When two invocations overlap, and a third comes after they ended
    results: list[Any] = []
    threads = [threading.Thread(target=lambda n=n: results.append(function.invoke({"n": n}).result)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    later = function.invoke({"n": 3}).result

    # Then each saw only its own request, in its own environment, and the third reused an idle one
    assert sorted((r["n"], r["saw"]) for r in results) == [(1, 1), (2, 2)]
    assert len({r["module"] for r in results}) == 2
    assert later["module"] in {r["module"] for r in results}
    assert function.environments == 2


def test_powertools_sees_each_concurrent_invocations_own_event() -> None:
    # Given the local stack's isolation of Powertools' process-wide "current event" (Lambda: one per process)
    import threading

    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    from local.lambdas import isolate_powertools_per_thread

    isolate_powertools_per_thread()
    isolate_powertools_per_thread()  # idempotent
    app = APIGatewayHttpResolver()
    both_set = threading.Barrier(2)
    seen: dict[str, Any] = {}

    # When two invocations on two threads set their events, then read them back
    def invocation(name: str) -> None:
        BaseRouter.current_event = name  # what resolve() does
        both_set.wait()
        seen[name] = (app.current_event, BaseRouter.current_event)

    threads = [threading.Thread(target=invocation, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then each read its own event, never the other's
    assert seen == {"first": ("first", "first"), "second": ("second", "second")}
