"""`checkout-admin console`: a web console on 127.0.0.1 that forwards /admin calls, SigV4-signed, to the admin API.

A browser cannot sign AWS requests and the admin API stays behind IAM, so the console runs on the operator's
machine (as `kubectl proxy` does) and signs each call with the operator's own credentials: SSO, MFA and
CloudTrail included, and the admin API records that identity on every action, as it does for any caller.

What keeps another web page or another local user out:
- it listens on 127.0.0.1 only, and answers only requests whose Host is 127.0.0.1:PORT or localhost:PORT, so a
  DNS-rebinding page (evil.example resolving to 127.0.0.1) is refused;
- the printed URL carries a one-time token; opening it sets an HttpOnly, SameSite=Strict session cookie, and every
  other request needs that cookie (compared in constant time); the token then stops working;
- no CORS header is ever sent, a POST needs a JSON body and, when the browser names it, our own Origin;
- only /admin routes (GET and POST) are forwarded, nothing else of the account can be reached through it.

The server is the standard library's ThreadingHTTPServer: one operator, a handful of requests a minute, static
files and a forwarding proxy. A web framework would add a dependency to the operator tool (and to the Lambda layer
the package ships in) for nothing this needs.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

HOST = "127.0.0.1"
COOKIE = "checkout_console"
MAX_BODY_BYTES = 64 * 1024
UPSTREAM_TIMEOUT_SECONDS = 30.0
# An /admin path as the admin API defines them: plain segments, no dot segments, no encoded slash or backslash.
_ADMIN_PATH = re.compile(r"^/admin(/[A-Za-z0-9_~:@.-]+)*$")
_TOKEN_IN_LOG = re.compile(r"token=[^&\s]*")
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class ConsoleError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes


class AdminApi(Protocol):
    """Where /admin calls go: the deployed admin API (signed) or the local stack's front."""

    description: str
    identity: str

    def send(self, method: str, path_and_query: str, body: bytes | None) -> UpstreamAnswer: ...


def _base_url(url: str) -> str:
    """The API's base URL, whether given as the API's URL or as the stack's AdminApiBaseUrl (ending in /admin)."""
    url = url.rstrip("/")
    return url[: -len("/admin")] if url.endswith("/admin") else url


def region_of(url: str, fallback: str | None) -> str:
    """The Region to sign for: the execute-api host names it; a custom domain needs the session's Region."""
    match = _EXECUTE_API_HOST.match(urlsplit(url).hostname or "")
    if match:
        return match[1]
    if fallback:
        return fallback
    raise ConsoleError("no_region", f"cannot tell the Region of {url}; pass --region")


class SignedAdminApi:
    """The deployed admin API, each call signed with SigV4 for execute-api by botocore (the AWS CLI's own signer)."""

    def __init__(self, url: str, session: Any, *, region: str, identity: str, client: httpx.Client | None = None):
        self._base = _base_url(url)
        self._session = session
        self._region = region
        self.identity = identity
        self.description = f"{self._base}/admin (IAM, signed as {identity})"
        self._client = client or httpx.Client(timeout=UPSTREAM_TIMEOUT_SECONDS)

    def send(self, method: str, path_and_query: str, body: bytes | None) -> UpstreamAnswer:
        credentials = self._session.get_credentials()
        if credentials is None:
            raise ConsoleError("no_credentials", "no AWS credentials found (aws sso login, or AWS_PROFILE)")
        url = self._base + path_and_query
        headers = {"Content-Type": "application/json"} if body else {}
        request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
        # Frozen per call: refreshable credentials (SSO, assumed roles) renew between calls, never within one.
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", self._region).add_auth(request)
        prepared = request.prepare()
        response = self._client.request(method, prepared.url, content=body or None, headers=dict(prepared.headers))
        return UpstreamAnswer(response.status_code, response.content)


class LocalAdminApi:
    """The local stack's front (`make run`): IAM is not enforced there, so nothing is signed."""

    def __init__(self, url: str, client: httpx.Client | None = None) -> None:
        self._base = _base_url(url)
        self.identity = "the local stack's fixed identity (IAM is not enforced locally)"
        self.description = f"{self._base}/admin (local stack, not signed)"
        self._client = client or httpx.Client(timeout=UPSTREAM_TIMEOUT_SECONDS)

    def send(self, method: str, path_and_query: str, body: bytes | None) -> UpstreamAnswer:
        headers = {"Content-Type": "application/json"} if body else {}
        response = self._client.request(method, self._base + path_and_query, content=body or None, headers=headers)
        return UpstreamAnswer(response.status_code, response.content)


@dataclass
class Access:
    """The one-time token of the printed URL, and the session it becomes once opened."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, offered: str) -> str | None:
        """Exchanges the token for a session secret, once; None for a wrong or an already used token."""
        with self._lock:
            if self.session is not None or not hmac.compare_digest(offered.encode(), self.token.encode()):
                return None
            self.session = secrets.token_urlsafe(32)
            return self.session

    def allows(self, cookie: str | None) -> bool:
        session = self.session
        return bool(cookie and session and hmac.compare_digest(cookie.encode(), session.encode()))


def _static(name: str) -> bytes:
    return (resources.files("checkout.console") / "static" / name).read_bytes()


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, api: AdminApi, *, mode: str, log: Callable[[str], None] | None = None) -> None:
        super().__init__((HOST, port), ConsoleHandler)
        self.api = api
        self.mode = mode
        self.access = Access()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def start_url(self) -> str:
        return f"{self.origin}/?token={self.access.token}"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}


class ConsoleHandler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "checkout-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # The one-time token never reaches a log, even after it is used.
        self.server.log(f"console: {self.address_string()} {_TOKEN_IN_LOG.sub('token=…', format % args)}")

    # ---- entry points --------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "only GET and POST")

    do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_PUT

    def _handle(self, method: str) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts():
            # DNS rebinding: a page on another name that resolves to 127.0.0.1 is not us.
            self._refuse(HTTPStatus.FORBIDDEN, "host_not_allowed", f"this console answers {self.server.origin} only")
            return
        url = urlsplit(self.path)
        if method == "GET" and url.path == "/" and "token" in parse_qs(url.query):
            if self.server.access.allows(self._cookie()):
                self._redirect_home()  # the link opened again in the browser it already signed in
            else:
                self._open_session(parse_qs(url.query)["token"][0])
            return
        if not self.server.access.allows(self._cookie()):
            self._refuse(
                HTTPStatus.UNAUTHORIZED,
                "not_signed_in",
                "open the link that `checkout-admin console` printed (it works once); restart it for a new one",
            )
            return
        if method == "POST" and not self._same_origin():
            self._refuse(HTTPStatus.FORBIDDEN, "cross_origin", "requests from other origins are refused")
            return
        if method == "GET" and url.path in STATIC_FILES:
            name, content_type = STATIC_FILES[url.path]
            self._send(HTTPStatus.OK, _static(name), content_type)
            return
        if method == "GET" and url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            return
        if method == "GET" and url.path == "/api/console":
            body = {"mode": self.server.mode, "admin_api": self.server.api.description}
            self._send_json(HTTPStatus.OK, body)
            return
        if url.path.startswith("/api/admin"):
            self._forward(method, url.path.removeprefix("/api"), url.query)
            return
        self._refuse(HTTPStatus.NOT_FOUND, "not_found", f"no console page {url.path}")

    # ---- session -------------------------------------------------------------------------------
    def _open_session(self, token: str) -> None:
        session = self.server.access.open(token)
        if session is None:
            self._refuse(
                HTTPStatus.UNAUTHORIZED,
                "token_used",
                "this link was already opened (or is wrong); restart `checkout-admin console` for a new one",
            )
            return
        self._redirect_home(f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/")

    def _redirect_home(self, cookie: str | None = None) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self._common_headers()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _cookie(self) -> str | None:
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel else None

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in {self.server.origin, f"http://localhost:{self.server.port}"}:
            return False
        return self.headers.get("Sec-Fetch-Site", "same-origin") in {"same-origin", "none"}

    # ---- forwarding ----------------------------------------------------------------------------
    def _forward(self, method: str, path: str, query: str) -> None:
        if not _ADMIN_PATH.fullmatch(path) or any(segment in {".", ".."} for segment in path.split("/")):
            self._refuse(HTTPStatus.NOT_FOUND, "not_forwarded", "only the admin API's /admin routes are forwarded")
            return
        body: bytes | None = None
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", "at most 64 KiB")
                return
            body = self.rfile.read(length) if length else None
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if body and content_type != "application/json":
                self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "json_only", "a POST body must be application/json")
                return
        try:
            answer = self.server.api.send(method, path + (f"?{query}" if query else ""), body)
        except ConsoleError as exc:
            self._refuse(HTTPStatus.BAD_GATEWAY, exc.code, exc.message)
            return
        except httpx.HTTPError as exc:
            self._refuse(HTTPStatus.BAD_GATEWAY, "admin_api_unreachable", f"the admin API did not answer: {exc}")
            return
        self._send(answer.status, answer.body, "application/json")

    # ---- answers -------------------------------------------------------------------------------
    def _common_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            # Say so: a client that is not told keeps the connection and sends its next request into a socket
            # this server has closed (httpx: "Server disconnected without sending a response").
            self.send_header("Connection", "close")
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        # The body of a POST nobody reads would otherwise be taken for the next request on this connection.
        self.close_connection = True
        self._send_json(status, {"error": code, "message": message})


def serve(server: ConsoleServer, *, out: Callable[[str], None]) -> None:
    """Prints where to go, then serves until Ctrl-C."""
    out(f"checkout console: {server.start_url}")
    out(f"  admin API: {server.api.description}")
    out("  Open the link once: it signs this browser in and then stops working. Ctrl-C to stop.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
