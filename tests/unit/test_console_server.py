"""`checkout-admin console`'s server: who may use it, what it forwards, and how it signs for execute-api."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from botocore.credentials import Credentials

from checkout.console.server import (
    COOKIE,
    ConsoleError,
    ConsoleServer,
    SignedAdminApi,
    UpstreamAnswer,
    region_of,
)


@dataclass
class RecordingApi:
    """Stands in for the admin API: remembers each forwarded call, answers 200 with what it got."""

    description: str = "recording admin API"
    identity: str = "arn:aws:iam::123456789012:user/tester"
    calls: list[tuple[str, str, bytes | None]] = field(default_factory=list)

    def send(self, method: str, path_and_query: str, body: bytes | None) -> UpstreamAnswer:
        self.calls.append((method, path_and_query, body))
        return UpstreamAnswer(200, json.dumps({"forwarded": path_and_query}).encode())


@dataclass
class Running:
    server: ConsoleServer
    api: RecordingApi

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.server.origin, follow_redirects=False, **kwargs)

    @contextlib.contextmanager
    def signed_in(self) -> Iterator[httpx.Client]:
        with self.client() as client:
            answer = client.get(f"/?token={self.server.access.token}")
            assert answer.status_code == 303
            yield client


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def console(log: list[str]) -> Iterator[Running]:
    api = RecordingApi()
    server = ConsoleServer(0, api, mode="aws", log=log.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Running(server, api)
    finally:
        server.shutdown()
        server.server_close()


def test_the_printed_link_signs_the_browser_in_once_with_a_strict_http_only_cookie(console: Running) -> None:
    with console.client() as client:
        answer = client.get(f"/?token={console.server.access.token}")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert client.get("/").status_code == 200
        # Opened again in the browser it signed in: just the console
        assert client.get(f"/?token={console.server.access.token}").status_code == 303
    # The same link a second time (another browser, a leaked URL) opens nothing
    with console.client() as other:
        again = other.get(f"/?token={console.server.access.token}")
        assert again.status_code == 401
        assert again.json()["error"] == "token_used"
        assert other.get("/api/admin/compensations").status_code == 401


def test_a_wrong_token_opens_nothing_and_the_right_one_still_works(console: Running) -> None:
    with console.client() as client:
        assert client.get("/?token=guess").status_code == 401
        assert console.server.access.session is None
    with console.signed_in() as client:
        assert client.get("/static/console.js").status_code == 200


def test_every_page_and_call_needs_the_session(console: Running) -> None:
    with console.client(cookies={COOKIE: "forged"}) as client:
        for path in ("/", "/static/console.js", "/api/console", "/api/admin/compensations"):
            answer = client.get(path)
            assert answer.status_code == 401, path
            assert answer.json()["error"] == "not_signed_in"
    assert console.api.calls == []


def test_another_host_name_is_refused_even_with_the_session(console: Running) -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends Host: evil.example:PORT
    with console.signed_in() as client:
        answer = client.get("/api/admin/compensations", headers={"Host": f"evil.example:{console.server.port}"})
        assert answer.status_code == 403
        assert answer.json()["error"] == "host_not_allowed"
        assert client.get("/", headers={"Host": f"localhost:{console.server.port}"}).status_code == 200
    assert console.api.calls == []


def test_only_admin_routes_are_forwarded_with_their_query(console: Running) -> None:
    with console.signed_in() as client:
        answer = client.get("/api/admin/compensations", params={"status": "failed", "limit": "10"})
        assert answer.status_code == 200
        assert answer.json() == {"forwarded": "/admin/compensations?status=failed&limit=10"}
        for path in ("/api/admin/../orders", "/api/adminx", "/api/admin/%2e%2e/x", "/api/checkout/confirm"):
            refused = client.get(path)
            assert refused.status_code == 404, path
    assert [call[1] for call in console.api.calls] == ["/admin/compensations?status=failed&limit=10"]


def test_a_post_must_be_json_from_our_own_origin(console: Running) -> None:
    path = "/api/admin/compensations/fc_1/resolve"
    with console.signed_in() as client:
        evil = client.post(path, json={"note": "x"}, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        cross = client.post(path, json={"note": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        form = client.post(path, content=b"note=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415
        ours = client.post(path, json={"note": "done"}, headers={"Origin": console.server.origin})
        assert ours.status_code == 200
    assert console.api.calls == [("POST", "/admin/compensations/fc_1/resolve", b'{"note":"done"}')]


def test_no_cors_and_a_strict_content_security_policy(console: Running) -> None:
    with console.signed_in() as client:
        answer = client.get("/api/admin/kpis", headers={"Origin": "https://evil.example"})
        preflight = client.request("OPTIONS", "/api/admin/kpis", headers={"Origin": "https://evil.example"})
        page = client.get("/")
    assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


# --- signing ---------------------------------------------------------------------------------------


class _Capture(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        _Capture.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        payload = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Session:
    credentials: Credentials | None

    def get_credentials(self) -> Credentials | None:
        return self.credentials


def test_each_call_is_sigv4_signed_for_execute_api_with_the_operators_credentials() -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    _Capture.seen.clear()
    try:
        session = _Session(Credentials("AKIDEXAMPLE", "secret", "session-token"))
        base = f"http://127.0.0.1:{upstream.server_address[1]}/admin"
        api = SignedAdminApi(base, session, region="eu-west-1", identity="arn:aws:sts::1:assumed-role/ops/me")
        api.send("GET", "/admin/compensations?status=failed", None)
        api.send("POST", "/admin/compensations/fc_1/resolve", b'{"note":"done"}')
    finally:
        upstream.shutdown()
        upstream.server_close()
    get, post = _Capture.seen
    assert get["path"] == "/admin/compensations?status=failed"
    for request in (get, post):
        authorization = request["headers"]["Authorization"]
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/execute-api/aws4_request" in authorization
        assert "SignedHeaders=" in authorization
        assert "host" in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
        assert request["headers"]["X-Amz-Security-Token"] == "session-token"
        assert request["headers"]["X-Amz-Date"]
    assert post["body"] == b'{"note":"done"}'


def test_without_credentials_nothing_is_sent() -> None:
    api = SignedAdminApi(
        "https://abc123.execute-api.us-east-1.amazonaws.com", _Session(None), region="us-east-1", identity="?"
    )
    with pytest.raises(ConsoleError) as refused:
        api.send("GET", "/admin/kpis", None)
    assert refused.value.code == "no_credentials"


def test_the_region_comes_from_the_execute_api_host_else_from_the_session() -> None:
    assert region_of("https://abc123.execute-api.eu-central-1.amazonaws.com/admin", None) == "eu-central-1"
    assert region_of("https://admin.shop.example/admin", "us-west-2") == "us-west-2"
    with pytest.raises(ConsoleError):
        region_of("https://admin.shop.example/admin", None)


# --- the command ---------------------------------------------------------------------------------------


class _StubbedSession:
    """A boto3 session whose clients answer from botocore Stubbers (no AWS call leaves the test)."""

    region_name = "eu-west-1"

    def __init__(self, outputs: list[dict[str, str]], arn: str) -> None:
        import boto3
        from botocore.stub import Stubber

        self._clients: dict[str, Any] = {}
        cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
        stub = Stubber(cloudformation)
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": "checkout-saga",
                        "CreationTime": "2026-12-01T00:00:00Z",
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": outputs,
                    }
                ]
            },
            {"StackName": "checkout-saga"},
        )
        stub.activate()
        sts = boto3.client("sts", region_name="eu-west-1")
        sts_stub = Stubber(sts)
        sts_stub.add_response("get_caller_identity", {"Arn": arn, "UserId": "AIDA", "Account": "123456789012"}, {})
        sts_stub.activate()
        self._clients = {"cloudformation": cloudformation, "sts": sts}

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._clients[service]

    def get_credentials(self) -> Credentials:
        return Credentials("AKIDEXAMPLE", "secret")


def test_console_finds_the_admin_api_in_the_stack_outputs_and_names_a_taken_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from checkout.cli import main

    session = _StubbedSession(
        [{"OutputKey": "AdminApiBaseUrl", "OutputValue": "https://abc123.execute-api.eu-west-1.amazonaws.com/admin"}],
        "arn:aws:sts::123456789012:assumed-role/ops/me",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["console", "--port", str(port)], session=session, environ={})

    assert status == 1
    error = json.loads(capsys.readouterr().err)
    assert error["error"] == "port_in_use"
    assert "--port 0" in error["message"]


def test_console_without_a_usable_identity_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from checkout.cli import main

    session = _StubbedSession([], "arn:aws:iam::123456789012:user/unused")
    session._clients["sts"] = _Refusing()
    status = main(["console", "--api-url", "https://abc123.execute-api.eu-west-1.amazonaws.com"], session=session)

    assert status == 1
    assert json.loads(capsys.readouterr().err)["error"] == "no_identity"


class _Refusing:
    def get_caller_identity(self) -> Any:
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()


def test_the_token_never_reaches_the_log(console: Running, log: list[str]) -> None:
    with console.signed_in() as client:
        client.get("/api/admin/counts")
    assert log
    assert not [line for line in log if console.server.access.token in line]
