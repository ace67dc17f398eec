"""The local HTTP front: the template's HttpApi routes served as API Gateway (HTTP API, payload 2.0) would."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from local.lambdas import Invocation, InvocationLog, LocalFunction
from local.template_stack import TemplateStack

HOST = "127.0.0.1"
# API Gateway's payload limit for HTTP APIs.
MAX_BODY_BYTES = 10 * 1024 * 1024
# The most one POST /_local/clock may move the clock: a year ages anything this system waits for (capture
# backoff, stale sagas, a week's authorization expiry); a bigger number is a typo, not a test.
MAX_CLOCK_ADVANCE_SECONDS = 366 * 24 * 3600
_TEXT_TYPES = re.compile(r"^text/|json|xml|javascript|x-www-form-urlencoded|graphql", re.IGNORECASE)
_PARAM = re.compile(r"^\{([^{}+]+)(\+?)\}$")


@dataclass(frozen=True)
class HttpRoute:
    """One HttpApi event of one function: `METHOD /path/{param}`."""

    function: LocalFunction
    event_name: str
    method: str
    path: str
    iam: bool

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]

    def specificity(self) -> tuple[int, ...]:
        """API Gateway prefers literal segments over {param}, and {param} over {greedy+}, left to right."""
        ranks = []
        for segment in self.segments:
            match = _PARAM.match(segment)
            ranks.append(0 if match is None else (2 if match[2] else 1))
        return (*ranks, 0 if self.method != "ANY" else 1)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        wanted = self.segments
        given = [s for s in path.split("/") if s]
        params: dict[str, str] = {}
        for index, segment in enumerate(wanted):
            match = _PARAM.match(segment)
            if match is not None and match[2]:
                if index >= len(given):
                    return None
                params[match[1]] = unquote("/".join(given[index:]))
                return params
            if index >= len(given):
                return None
            if match is None:
                if segment != given[index]:
                    return None
            else:
                params[match[1]] = unquote(given[index])
        return params if len(given) == len(wanted) else None


def http_routes(stack: TemplateStack, functions: dict[str, LocalFunction]) -> list[HttpRoute]:
    """Every HttpApi event of every function, most specific first."""
    routes = []
    for function in functions.values():
        for name, event in function.events_of_type("HttpApi").items():
            props = event.get("Properties") or {}
            method = str(stack.resolve(props.get("Method", "ANY"))).upper()
            path = str(stack.resolve(props.get("Path", "/{proxy+}")))
            routes.append(HttpRoute(function, name, "ANY" if method == "*" else method, path, _uses_iam(stack, props)))
    return sorted(routes, key=HttpRoute.specificity)


def _uses_iam(stack: TemplateStack, props: dict[str, Any]) -> bool:
    authorizer = (props.get("Auth") or {}).get("Authorizer")
    if authorizer is None:
        api = props.get("ApiId")
        api_props: dict[str, Any] = {}
        if isinstance(api, dict) and "Ref" in api and api["Ref"] in stack.resources:
            api_props = stack.resources[api["Ref"]].get("Properties", {})
        else:
            api_props = stack.template.get("Globals", {}).get("HttpApi", {})
        authorizer = (api_props.get("Auth") or {}).get("DefaultAuthorizer")
    return str(stack.resolve(authorizer)) == "AWS_IAM" if authorizer else False


def find_route(routes: list[HttpRoute], method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | None:
    for route in routes:
        params = route.match(method, path)
        if params is not None:
            return route, params
    return None


def api_gateway_event(
    route: HttpRoute,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    path_parameters: dict[str, str],
    account: str,
    api_id: str,
    now: float | None = None,
) -> dict[str, Any]:
    """A real API Gateway HTTP API payload 2.0 event, as events/confirm_checkout_confirm.json shows it."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
            continue
        # API Gateway joins repeated headers with commas.
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    merged.setdefault("x-forwarded-for", source_ip)
    merged.setdefault("x-forwarded-proto", "http")
    merged["x-amzn-trace-id"] = f"Root=1-{int(moment.timestamp()):08x}-{secrets.token_hex(12)}"
    host = merged.get("host", f"{api_id}.execute-api.local")
    request_id = base64.b64encode(secrets.token_bytes(10)).decode().rstrip("=")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": merged,
        "requestContext": {
            "accountId": account,
            "apiId": api_id,
            "domainName": host,
            "domainPrefix": host.split(".", 1)[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": moment.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(moment.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if raw_query:
        query: dict[str, str] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            query[name] = f"{query[name]},{value}" if name in query else value
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if route.iam:
        event["requestContext"]["authorizer"] = {"iam": local_identity(account)}
    if body:
        text = _as_text(body, merged.get("content-type", ""))
        if text is None:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def local_identity(account: str) -> dict[str, Any]:
    """The caller an IAM-authorized route sees locally; nothing checks a signature."""
    return {
        "accessKey": "AKIALOCALDEVELOPER00",
        "accountId": account,
        "callerId": "AIDALOCALDEVELOPER00",
        "cognitoIdentity": None,
        "principalOrgId": None,
        "userArn": f"arn:aws:iam::{account}:user/local-developer",
        "userId": "AIDALOCALDEVELOPER00",
    }


def _as_text(body: bytes, content_type: str) -> str | None:
    if content_type and not _TEXT_TYPES.search(content_type):
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    headers: list[tuple[str, str]]


def lambda_answer(invocation: Invocation) -> HttpAnswer:
    """Turns a handler's payload 2.0 response into HTTP, as API Gateway does (statusCode or inferred 200)."""
    if not invocation.ok:
        return json_answer(500, {"error": "internal_error", "message": "Internal Server Error"})
    result = invocation.result
    if not isinstance(result, dict) or "statusCode" not in result:
        return json_answer(200, result)
    try:
        status = int(result["statusCode"])
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
        raw = result.get("body") or ""
        body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    except (TypeError, ValueError, AttributeError):
        return json_answer(500, {"error": "internal_error", "message": "Internal Server Error"})
    return HttpAnswer(status, body, headers)


def json_answer(status: int, body: Any) -> HttpAnswer:
    return HttpAnswer(status, json.dumps(body).encode(), [("Content-Type", "application/json")])


class LocalControl(Protocol):
    """The stack's local-only endpoints under /_local/ (never part of the deployed API)."""

    def describe(self) -> dict[str, Any]: ...

    def list_functions(self) -> list[dict[str, Any]]: ...

    def run(self, name: str) -> tuple[int, dict[str, Any]]: ...

    def advance_clock(self, advance_seconds: float | None) -> dict[str, Any]: ...


class Front(ThreadingHTTPServer):
    daemon_threads = True
    # A request may be waiting on a delayed provider; shutdown must not wait for it.
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        port: int,
        routes: list[HttpRoute],
        control: LocalControl,
        log: InvocationLog,
        *,
        account: str,
        api_id: str = "local",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.control = control
        self.log = log
        self.account = account
        self.api_id = api_id
        self.clock = clock
        self._thread: threading.Thread | None = None
        super().__init__((HOST, port), _FrontHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Front:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="front", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that hung up
        super().handle_error(request, client_address)


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    disable_nagle_algorithm = True
    server: Front

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the invocation log says what matters, once

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    # The other standard methods (RFC 9110, and QUERY) are routed too: no route has them, so they get the JSON
    # 404 API Gateway answers a request no route matches. A method HTTP does not define stays send_error's 501.
    def do_TRACE(self) -> None:
        self._serve()

    def do_CONNECT(self) -> None:
        self._serve()

    def do_QUERY(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send(json_answer(411, {"error": "length_required", "message": "send a Content-Length header"}))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(json_answer(413, {"error": "payload_too_large", "message": "Request Entity Too Large"}))
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        if split.path.startswith("/_local/") or split.path == "/_local":
            self._send(self._local(split.path, body))
            return
        self._send(self._api(split.path or "/", split.query, body))

    def _api(self, path: str, query: str, body: bytes) -> HttpAnswer:
        front = self.server
        found = find_route(front.routes, self.command, path)
        if found is None:
            return json_answer(404, {"error": "not_found", "message": f"no route matches {self.command} {path}"})
        route, params = found
        event = api_gateway_event(
            route,
            method=self.command,
            raw_path=path,
            raw_query=query,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            path_parameters=params,
            account=front.account,
            api_id=front.api_id,
            now=front.clock(),
        )
        invocation = route.function.invoke(event)
        answer = lambda_answer(invocation)
        if invocation.timed_out:
            answer = json_answer(500, {"error": "internal_error", "message": "Internal Server Error"})
        outcome = f"-> {answer.status}" if invocation.error is None else f"-> 500 {type(invocation.error).__name__}"
        front.log.line(route.function, f"http {self.command} {path}", outcome, invocation)
        answer.headers.append(("apigw-requestid", event["requestContext"]["requestId"]))
        return answer

    def _local(self, path: str, body: bytes) -> HttpAnswer:
        control = self.server.control
        parts = [p for p in path.split("/") if p][1:]
        match (self.command, parts):
            case ("GET", ["health"]):
                return json_answer(200, {"status": "ready"})
            case ("GET", ["stack"]):
                return json_answer(200, control.describe())
            case ("GET", ["functions"]):
                return json_answer(200, {"functions": control.list_functions()})
            case ("POST", ["run", name]):
                status, payload = control.run(unquote(name))
                return json_answer(status, payload)
            case ("GET", ["clock"]):
                return json_answer(200, control.advance_clock(None))
            case ("POST", ["clock"]):
                return self._advance_clock(body)
        return json_answer(404, {"error": "not_found", "message": f"no local endpoint {self.command} {path}"})

    def _advance_clock(self, body: bytes) -> HttpAnswer:
        """Moves the clock by a JSON number of seconds, finite and in [0, one year]; anything else is a 422
        and the clock stays where it was (json.loads reads NaN and Infinity, so they are refused by value)."""
        expected = f'body must be {{"advance_seconds": <number from 0 to {MAX_CLOCK_ADVANCE_SECONDS}>}}'
        try:
            spec = json.loads(body or b"{}")
        except ValueError as exc:
            return json_answer(422, {"error": "validation_error", "message": f"{expected} (not JSON: {exc})"})
        seconds = spec.get("advance_seconds") if isinstance(spec, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return json_answer(422, {"error": "validation_error", "message": f"{expected}, got {seconds!r}"})
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_CLOCK_ADVANCE_SECONDS:
            message = f"{expected}; {seconds!r} is out of range (the clock only moves forward)"
            return json_answer(422, {"error": "validation_error", "message": message})
        return json_answer(200, self.server.control.advance_clock(float(seconds)))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (414 URI too long, 431 headers too large, 501 unknown method, 400 bad
        request line) in the front's JSON shape instead of its HTML page; the connection is closed after."""
        short, long = self.responses.get(code, ("Error", "error"))
        error = re.sub(r"[^a-z0-9]+", "_", short.lower()).strip("_") or "error"
        answer = json_answer(code, {"error": error, "message": message or explain or long})
        self.close_connection = True
        if not self.command:
            self.command = "GET"  # the request line was unreadable: answer as to a GET (with a body)
        self._send(answer)

    def _send(self, answer: HttpAnswer) -> None:
        with contextlib.suppress(OSError):
            self.send_response(answer.status)
            names = {name.lower() for name, _ in answer.headers}
            for name, value in answer.headers:
                if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
                    self.send_header(name, value)
            if "content-type" not in names and answer.body:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)
