"""Shared machinery of the fake providers: threaded HTTP server, fault injection, idempotency and ledger."""

import argparse
import contextlib
import copy
import json
import math
import random
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self, cast
from urllib.parse import parse_qs, urlsplit

type JsonObject = dict[str, Any]

HOST = "127.0.0.1"
MAX_BODY_BYTES = 1024 * 1024
# stop() waits up to this long for the accept loop to notice it; suites start and stop fakes per test.
_POLL_INTERVAL = 0.01
# Bounds how long a handler thread waits on an idle keep-alive connection nobody closes.
_IDLE_TIMEOUT = 60.0
# The longest injectable delay: past Lambda's 900 s limit nothing can still be waiting for the answer.
MAX_DELAY_SECONDS = 900.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(slots=True)
class Fault:
    """What to do to the next calls of one operation; `times=None` lasts until cleared."""

    status: int | None = None
    delay: float = 0.0
    decline: bool = False
    lose_response: bool = False
    times: int | None = None

    def to_json(self) -> JsonObject:
        return asdict(self)

    def describe(self) -> str:
        """What this fault does to a call, for the request log: `status:500`, `delay:3`, `lose_response`."""
        parts = [f"delay:{self.delay:g}"] if self.delay else []
        parts += [f"status:{self.status}"] if self.status is not None else []
        parts += ["decline"] if self.decline else []
        parts += ["lose_response"] if self.lose_response else []
        return "+".join(parts) or "none"


class FaultOutOfRange(ValueError):
    """A fault number that is not finite or not in its range; the control endpoint answers 422."""


def _number(name: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise FaultOutOfRange(f"{name} must be a finite number between {low:g} and {high:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(slots=True)
class Response:
    status: int
    body: JsonObject
    # Parameter validation errors are not cached under an idempotency key (Stripe's rule: nothing is
    # stored unless the endpoint started executing), so a corrected retry with the same key can succeed.
    store: bool = True
    # Close the socket without answering: the client sees the connection drop.
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call:
    """One operation to execute, as the provider-specific handler sees it."""

    params: Any
    args: tuple[str, ...]
    idempotency_key: str | None
    decline: bool


@dataclass(frozen=True, slots=True)
class Route:
    operation: str
    handler: Callable[[Call], Response]
    args: tuple[str, ...] = ()


class BadRequest(Exception):
    """Raised by a fake's request parser; carries the provider-shaped error to answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        response.store = False
        self.response = response


@dataclass(slots=True)
class _KeyEntry:
    fingerprint: str
    # None while the first request with this key is still being processed.
    result: tuple[int, JsonObject] | None = None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads may be asleep in an injected delay; server_close() must not wait for them.
    block_on_close = False
    request_queue_size = 128

    def __init__(self, fake: "FakeServer", port: int) -> None:
        self.fake = fake
        super().__init__((HOST, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up, or a connection closed by stop(), is normal traffic for a fake.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every call.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> "FakeServer":
        return cast(_HTTPServer, self.server).fake

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._send(self.fake._error(411, "length_required", "Send a Content-Length header."))
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(self.fake._error(413, "request_too_large", "Request body too large."))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        response = self.fake.handle(request)
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(response)

    def _send(self, response: Response) -> None:
        payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Request-Id", new_id("req"))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class FakeServer(ABC):
    """A fake HTTP provider on 127.0.0.1 with fault injection, idempotency keys and a ledger.

    Subclasses supply routing, parsing, the provider's error shape and the operations themselves;
    handlers run under the fake's single lock, so they may read and change state freely.
    """

    name: ClassVar[str] = "fake"
    operations: ClassVar[frozenset[str]] = frozenset()
    decline_operations: ClassVar[frozenset[str]] = frozenset()
    ledger_ops: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, port: int = 0, *, verbose: bool = False) -> None:
        self.verbose = verbose
        self._port = port
        self._lock = threading.RLock()
        self._faults: dict[str, Fault] = {}
        # Per-request probabilistic faults (a load test's mix): operation -> [(probability, fault)].
        self._mixes: dict[str, list[tuple[float, Fault]]] = {}
        self._random = random.Random()
        self._idempotency: dict[str, _KeyEntry] = {}
        self._ledger: list[JsonObject] = []
        self._requests: list[JsonObject] = []
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a background daemon thread. After stop(), start() serves again on the same port
        with the state kept, which is how a test makes the provider go down and come back."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} is already running at {self.url}")
        self._stopping = threading.Event()
        httpd = _HTTPServer(self, self._port)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"{self.name}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving now: sleeping handlers wake and drop their connections, idle ones are closed."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError(f"{self.name} has no port until start()")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # ---- faults ----------------------------------------------------------------------------------

    def inject(
        self,
        operation: str,
        *,
        status: int | None = None,
        delay: float = 0.0,
        decline: bool = False,
        lose_response: bool = False,
        times: int | None = None,
    ) -> None:
        """Set the fault of one operation, replacing any earlier one for it.

        Faults act inside the idempotency layer: they are consumed only by calls that actually execute,
        never by a replay or an idempotency rejection. `delay` sleeps first, `status` answers that
        status without executing (cached under the key like any result), `decline` makes authorize
        decline, `lose_response` executes and caches, then closes the socket without answering.
        """
        fault = self._validated(operation, status, delay, decline, lose_response)
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError("times must be a positive integer, or None for until cleared")
        if times is not None and times < 1:
            raise FaultOutOfRange("times must be a positive integer, or None for until cleared")
        fault.times = times
        with self._lock:
            self._faults[operation] = fault

    def _validated(self, operation: str, status: int | None, delay: float, decline: bool, lose_response: bool) -> Fault:
        """A fault from checked parts; nothing is applied when a part is wrong."""
        if operation not in self.operations:
            raise ValueError(f"unknown operation {operation!r}; expected one of {sorted(self.operations)}")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError("status must be an HTTP error status between 400 and 599")
        if status is not None and not 400 <= status <= 599:
            raise FaultOutOfRange("status must be an HTTP error status between 400 and 599")
        seconds = _number("delay", delay, low=0, high=MAX_DELAY_SECONDS)
        if not isinstance(decline, bool) or not isinstance(lose_response, bool):
            raise ValueError("decline and lose_response must be booleans")
        if decline and operation not in self.decline_operations:
            raise ValueError(f"decline applies only to {sorted(self.decline_operations)}")
        return Fault(status, seconds, decline, lose_response, None)

    def inject_mix(self, operation: str, mix: Sequence[JsonObject], *, seed: int | None = None) -> None:
        """Per-request faults for one operation: each call independently gets the first entry whose share of a
        uniform draw it falls in (`probability` each, summing to at most 1), else runs normally. Replaces any
        earlier mix and plain fault of the operation. A load test's "10 % of calls fail in these four ways"."""
        entries: list[tuple[float, Fault]] = []
        if not isinstance(mix, list) or not mix:
            raise ValueError("mix must be a non-empty list of faults, each with a probability")
        for spec in mix:
            if not isinstance(spec, dict):
                raise ValueError("each mix entry must be an object")
            unknown = sorted(set(spec) - {"probability", "status", "delay", "decline", "lose_response"})
            if unknown:
                raise ValueError(f"unknown mix entry fields: {', '.join(unknown)}")
            probability = _number("probability", spec.get("probability"), low=0, high=1)
            fault = self._validated(
                operation,
                spec.get("status"),
                spec.get("delay", 0.0),
                spec.get("decline", False),
                spec.get("lose_response", False),
            )
            entries.append((probability, fault))
        if sum(p for p, _ in entries) > 1 + 1e-9:
            raise FaultOutOfRange("the probabilities of a mix must sum to at most 1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed must be an integer")
        with self._lock:
            self._faults.pop(operation, None)
            self._mixes[operation] = entries
            if seed is not None:
                self._random.seed(seed)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._mixes.clear()

    @property
    def mixes(self) -> dict[str, list[JsonObject]]:
        with self._lock:
            return {
                operation: [{"probability": p, **fault.to_json()} for p, fault in entries]
                for operation, entries in self._mixes.items()
            }

    @property
    def faults(self) -> dict[str, JsonObject]:
        with self._lock:
            return {operation: fault.to_json() for operation, fault in self._faults.items()}

    def _take_fault(self, operation: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(operation)
            if fault is None:
                return self._draw(operation)
            taken = Fault(**fault.to_json())
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[operation]
            return taken

    def _draw(self, operation: str) -> Fault | None:
        """One draw from the operation's mix (the lock is held)."""
        entries = self._mixes.get(operation)
        if not entries:
            return None
        draw = self._random.random()
        for probability, fault in entries:
            if draw < probability:
                return Fault(**fault.to_json())
            draw -= probability
        return None

    # ---- records ---------------------------------------------------------------------------------

    @property
    def ledger(self) -> list[JsonObject]:
        """Every state change that happened, oldest first (a copy)."""
        with self._lock:
            return copy.deepcopy(self._ledger)

    @property
    def requests(self) -> list[JsonObject]:
        """Every provider request received, control endpoints excluded, oldest first (a copy)."""
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def in_flight(self) -> int:
        """Provider requests being processed right now (including ones asleep in a delay)."""
        with self._lock:
            return self._in_flight

    def reset(self) -> None:
        """Forget all state, faults, idempotency keys, ledger and request log."""
        with self._lock:
            self._faults.clear()
            self._idempotency.clear()
            self._ledger.clear()
            self._requests.clear()
            self._reset_state()

    def _count_events(self, op: str, field_name: str, value: str | None) -> int:
        if op not in self.ledger_ops:
            raise ValueError(f"unknown ledger op {op!r}; expected one of {sorted(self.ledger_ops)}")
        with self._lock:
            return sum(
                1 for event in self._ledger if event["op"] == op and (value is None or event.get(field_name) == value)
            )

    def _record_event(self, op: str, call: Call, **fields: Any) -> None:
        """Append a ledger event; call only from a handler (the lock is held)."""
        self._ledger.append({"op": op, **fields, "idempotency_key": call.idempotency_key, "at": iso(utc_now())})

    # ---- subclass hooks --------------------------------------------------------------------------

    @abstractmethod
    def _route(self, method: str, path: str) -> Route | None:
        """The operation for a method and path, or None when the provider has no such endpoint."""

    @abstractmethod
    def _parse(self, request: Request) -> Any:
        """The request's parameters in canonical form; raise BadRequest when they cannot be read."""

    @abstractmethod
    def _error(self, status: int, code: str, message: str, **extra: Any) -> Response:
        """An error in the provider's own body shape."""

    @abstractmethod
    def _fault_response(self, status: int) -> Response:
        """What an injected `status` fault answers."""

    @abstractmethod
    def _key_in_use(self, key: str) -> Response:
        """409: another request with this key is still being processed."""

    @abstractmethod
    def _key_reused(self, key: str) -> Response:
        """400: this key was first used with other parameters."""

    @abstractmethod
    def _reset_state(self) -> None:
        """Forget provider state (the lock is held)."""

    def _authenticate(self, request: Request) -> Response | None:
        return None

    # ---- request handling ------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one HTTP request; the HTTP layer only moves bytes."""
        if request.path.startswith("/_"):
            return self._control(request)
        route = self._route(request.method, request.path)
        operation = route.operation if route is not None else None
        key = (request.header("Idempotency-Key") or None) if request.method == "POST" else None
        stopping = self._stopping
        with self._lock:
            self._in_flight += 1
        replayed = False
        response: Response | None = None
        applied: list[str] = []
        try:
            response, replayed = self._handle_provider(request, route, key, stopping, applied)
            return response
        except Exception:
            traceback.print_exc()
            response = self._error(500, "fake_internal_error", "The fake crashed; see its stderr.")
            return response
        finally:
            with self._lock:
                self._in_flight -= 1
                self._requests.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "operation": operation,
                        "idempotency_key": key,
                        "status": None if response is None or response.drop else response.status,
                        "replayed": replayed,
                        "lost": response is None or response.drop,
                        # The injected fault this call got, if any ("status:500", "delay:3", "lose_response").
                        "fault": applied[0] if applied else None,
                        "at": iso(utc_now()),
                    }
                )
            if self.verbose:
                outcome = "dropped" if response is None or response.drop else response.status
                print(f"{self.name}: {request.method} {request.path} -> {outcome}", file=sys.stderr)

    def _handle_provider(
        self,
        request: Request,
        route: Route | None,
        key: str | None,
        stopping: threading.Event,
        applied: list[str] | None = None,
    ) -> tuple[Response, bool]:
        denied = self._authenticate(request)
        if denied is not None:
            return denied, False
        if route is None:
            return self._error(404, "not_found", f"Unrecognized request URL ({request.method}: {request.path})."), False
        try:
            params = self._parse(request)
        except BadRequest as exc:
            return exc.response, False
        if key is None:
            return self._execute(route, params, None, stopping, applied), False

        fingerprint = json.dumps([request.method, request.path, params], sort_keys=True, default=str)
        with self._lock:
            entry = self._idempotency.get(key)
            if entry is not None:
                if entry.result is None:
                    return self._key_in_use(key), False
                if entry.fingerprint != fingerprint:
                    return self._key_reused(key), False
                status, body = entry.result
                return Response(status, copy.deepcopy(body), headers={"Idempotent-Replayed": "true"}), True
            entry = _KeyEntry(fingerprint)
            self._idempotency[key] = entry

        response: Response | None = None
        try:
            response = self._execute(route, params, key, stopping, applied)
        finally:
            with self._lock:
                # reset() may have dropped the entry meanwhile; never resurrect it.
                if self._idempotency.get(key) is entry:
                    if response is not None and response.store:
                        entry.result = (response.status, copy.deepcopy(response.body))
                    else:
                        del self._idempotency[key]
        return response, False

    def _execute(
        self, route: Route, params: Any, key: str | None, stopping: threading.Event, applied: list[str] | None = None
    ) -> Response:
        fault = self._take_fault(route.operation)
        if fault is not None and applied is not None:
            applied.append(fault.describe())
        if fault is not None and fault.delay > 0 and stopping.wait(fault.delay):
            # Stopped while asleep: behave like a provider that died mid-request.
            return Response(503, {}, store=False, drop=True)
        if fault is not None and fault.status is not None:
            response = self._fault_response(fault.status)
        else:
            call = Call(params, route.args, key, decline=fault is not None and fault.decline)
            with self._lock:
                response = route.handler(call)
        if fault is not None and fault.lose_response:
            response.drop = True
        return response

    # ---- control endpoints -----------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        match (request.method, request.path):
            case ("GET", "/_faults"):
                return Response(200, self._faults_view())
            case ("POST", "/_faults"):
                return self._control_inject(request)
            case ("DELETE", "/_faults"):
                self.clear_faults()
                return Response(200, self._faults_view())
            case ("GET", "/_ledger"):
                with self._lock:
                    return Response(200, {"ledger": self.ledger, "requests": self.requests})
            case ("POST", "/_reset"):
                self.reset()
                return Response(200, {"reset": True})
            case _:
                return self._error(404, "not_found", f"No control endpoint {request.method} {request.path}.")

    def _faults_view(self) -> JsonObject:
        view: JsonObject = {"faults": self.faults}
        mixes = self.mixes
        if mixes:
            view["mixes"] = mixes
        return view

    def _control_inject(self, request: Request) -> Response:
        """POST /_faults: {"operation", status?, delay?, decline?, lose_response?, times?} sets one fault;
        {"operation", "mix": [{probability, status?, delay?, lose_response?}, ...], seed?} sets per-request
        faults. Malformed: 400; a number not finite or out of range: 422. Either way nothing is applied."""
        try:
            # NaN and Infinity are not JSON; Python's parser accepts them, so they must be refused by value.
            spec = json.loads(request.body or b"null")
        except ValueError:
            return self._error(400, "invalid_fault", "Body must be JSON.")
        if not isinstance(spec, dict) or not isinstance(spec.get("operation"), str):
            return self._error(400, "invalid_fault", 'Body must be a JSON object with an "operation".')
        allowed = {"operation", "mix", "seed"} if "mix" in spec else {"operation", *Fault.__dataclass_fields__}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            return self._error(400, "invalid_fault", f"Unknown fault fields: {', '.join(unknown)}.")
        operation = spec.pop("operation")
        try:
            if "mix" in spec:
                self.inject_mix(operation, spec["mix"], seed=spec.get("seed"))
            else:
                self.inject(
                    operation,
                    status=spec.get("status"),
                    delay=spec.get("delay", 0.0),
                    decline=spec.get("decline", False),
                    lose_response=spec.get("lose_response", False),
                    times=spec.get("times"),
                )
        except FaultOutOfRange as exc:
            return self._error(422, "invalid_fault", str(exc))
        except ValueError as exc:
            return self._error(400, "invalid_fault", str(exc))
        return Response(200, self._faults_view())


def serve_main(factory: Callable[[int, bool], FakeServer], default_port: int, argv: Sequence[str] | None) -> int:
    """Command-line entry point shared by the fakes: serve on a port until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=f"Serve a fake provider on {HOST}.")
    parser.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port})")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    fake = factory(args.port, args.verbose).start()
    # A plain flag: Event.set() in a signal handler can deadlock against the main thread's Event.wait().
    stopping: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"{fake.name} listening on {fake.url}", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0
