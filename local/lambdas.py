"""The template's functions as local callables: discovery, handler import, Lambda context, one-line invocation log."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from local.template_stack import TemplateStack

# Lambda's own defaults when neither the function nor Globals set them.
DEFAULT_TIMEOUT_SECONDS = 3
DEFAULT_MEMORY_MB = 128

Handler = Callable[[dict[str, Any], Any], Any]


class LocalClock:
    """Wall time plus an offset the operator can move forward (`POST /_local/clock`), to age orders
    instead of waiting for stale periods and backoffs. Every function shares it through the Runtime."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return time.time() + self._offset

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the clock only moves forward, by a finite number of seconds")
        with self._lock:
            self._offset += seconds
            return self._offset


@dataclass
class LambdaContext:
    """The Lambda context's documented fields, with the remaining time counting down from the Timeout."""

    function_name: str
    timeout_seconds: float
    memory_limit_in_mb: int
    invoked_function_arn: str
    log_group_name: str
    function_version: str = "$LATEST"
    log_stream_name: str = field(default_factory=lambda: f"local/[$LATEST]{uuid.uuid4().hex}")
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self._end = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._end - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """What one call of a handler did: its result or the exception it raised, and how long it took."""

    result: Any = None
    error: BaseException | None = None
    duration_ms: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


@dataclass
class LocalFunction:
    """One `AWS::Serverless::Function` of the template, imported from its CodeUri and Handler."""

    logical_id: str
    folder: str
    module: str
    attribute: str
    function_name: str
    timeout_seconds: float
    memory_mb: int
    events: dict[str, dict[str, Any]]
    region: str
    account: str
    handler: Handler | None = None
    # Called (from a timer thread) the moment a run passes its Timeout while still running: the local stack
    # logs it then, as Lambda logs "Task timed out", not only when (if ever) the handler returns.
    on_timeout: Callable[[LocalFunction, float], None] | None = None
    # Execution environments: Lambda runs one invocation per environment at a time and starts another
    # environment (a cold start: the module imported afresh) for a concurrent one. Handlers keep per-request
    # state in module globals (Powertools' resolver keeps the current event and route on `app`), so two
    # invocations must never share one module instance. Idle environments are reused, as Lambda's are.
    _idle: list[Handler] = field(default_factory=list, repr=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _from_module: bool = field(default=False, repr=False)
    environments: int = 0

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    def load(self) -> LocalFunction:
        isolate_powertools_per_thread()
        module = importlib.import_module(self.module)
        self.handler = getattr(module, self.attribute)
        self._from_module = True
        return self

    def _acquire(self) -> Handler:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
            self.environments += 1
            first = self.environments == 1
        assert self.handler is not None
        if first or not self._from_module:
            return self.handler  # the imported module (or a handler a test set) is the first environment
        spec = importlib.util.find_spec(self.module)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)  # a fresh copy, not in sys.modules: its own globals
        spec.loader.exec_module(module)
        handler: Handler = getattr(module, self.attribute)
        return handler

    def _release(self, handler: Handler) -> None:
        with self._pool_lock:
            self._idle.append(handler)

    def context(self) -> LambdaContext:
        return LambdaContext(
            function_name=self.function_name,
            timeout_seconds=self.timeout_seconds,
            memory_limit_in_mb=self.memory_mb,
            invoked_function_arn=self.arn,
            log_group_name=f"/aws/lambda/{self.function_name}",
        )

    def events_of_type(self, *kinds: str) -> dict[str, dict[str, Any]]:
        return {name: spec for name, spec in self.events.items() if spec.get("Type") in kinds}

    def triggers(self) -> list[str]:
        return sorted({str(spec.get("Type")) for spec in self.events.values()})

    def invoke(self, event: dict[str, Any]) -> Invocation:
        """Call the handler as Lambda would: a fresh context, exceptions caught and printed (CloudWatch's job)."""
        if self.handler is None:
            self.load()
        assert self.handler is not None
        context = self.context()
        started = time.perf_counter()
        invocation = Invocation()
        watchdog = threading.Timer(self.timeout_seconds, self._timed_out, args=(context.aws_request_id,))
        watchdog.daemon = True
        watchdog.start()
        handler: Handler | None = None
        try:
            handler = self._acquire()
            invocation.result = handler(event, context)
        except Exception as exc:
            invocation.error = exc
            print(f"[{self.logical_id}] {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
        finally:
            watchdog.cancel()
            if handler is not None:
                self._release(handler)
        invocation.duration_ms = (time.perf_counter() - started) * 1000
        # A Python thread cannot be stopped, so the run finishes; but AWS would have cut it off here.
        invocation.timed_out = invocation.duration_ms > self.timeout_seconds * 1000
        return invocation

    def _timed_out(self, request_id: str) -> None:
        if self.on_timeout is not None:
            self.on_timeout(self, self.timeout_seconds)
        else:
            print(
                f"[{self.logical_id}] {request_id} Task timed out after {self.timeout_seconds:.2f} seconds",
                file=sys.stderr,
            )


_PER_THREAD = threading.local()
_ROUTER_GLOBALS = ("current_event", "lambda_context")


def isolate_powertools_per_thread() -> None:
    """Makes Powertools' event-handler globals per thread, as Lambda makes them per invocation.

    Powertools' resolvers keep the event and context being handled in class attributes of BaseRouter
    (`BaseRouter.current_event = ...` in resolve()): process-wide, which is right on Lambda (one invocation
    per process at a time) and wrong here, where one process runs concurrent invocations on threads: under
    load a session was created with another request's customer. Here (the local stack only, never deployed)
    both attributes become per-thread: a metaclass property for the class-level writes and reads, a property
    in BaseRouter for the instance-level reads (`app.current_event`). Hand-written: no library isolates a
    Lambda handler's process globals per thread."""
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    meta = type(BaseRouter)
    if getattr(meta, "_checkout_per_thread", False):
        return

    def per_thread(name: str) -> property:
        return property(lambda _: getattr(_PER_THREAD, name, None), lambda _, value: setattr(_PER_THREAD, name, value))

    namespace: dict[str, Any] = {name: per_thread(name) for name in _ROUTER_GLOBALS}
    per_thread_meta = type("PerThreadRouterMeta", (meta,), {**namespace, "_checkout_per_thread": True})
    for name in _ROUTER_GLOBALS:
        setattr(BaseRouter, name, per_thread(name))  # still the old metaclass here: lands in the class dict
    BaseRouter.__class__ = per_thread_meta  # type: ignore[method-assign]


def discover_functions(stack: TemplateStack) -> dict[str, LocalFunction]:
    """Every AWS::Serverless::Function of the template, by logical id, in template order (not imported yet)."""
    globals_ = stack.template.get("Globals", {}).get("Function", {})
    found: dict[str, LocalFunction] = {}
    for logical_id, resource in stack.of_type("AWS::Serverless::Function").items():
        props = resource.get("Properties", {})
        code_uri = str(stack.resolve(props.get("CodeUri", globals_.get("CodeUri", ""))))
        handler = str(stack.resolve(props.get("Handler", globals_.get("Handler", "app.lambda_handler"))))
        module_name, _, attribute = handler.rpartition(".")
        package = PurePosixPath(code_uri.strip("/")).parts
        if not package or not module_name:
            raise ValueError(f"{logical_id}: cannot import CodeUri {code_uri!r} Handler {handler!r}")
        name = props.get("FunctionName")
        found[logical_id] = LocalFunction(
            logical_id=logical_id,
            folder=package[-1],
            module=".".join([*package, *module_name.split("/")]),
            attribute=attribute,
            function_name=str(stack.resolve(name)) if name else f"{stack.stack_name}-{logical_id}",
            timeout_seconds=float(
                stack.resolve(props.get("Timeout", globals_.get("Timeout", DEFAULT_TIMEOUT_SECONDS)))
            ),
            memory_mb=int(stack.resolve(props.get("MemorySize", globals_.get("MemorySize", DEFAULT_MEMORY_MB)))),
            events=dict(props.get("Events") or {}),
            region=stack.region,
            account=stack.account,
        )
    return found


def find_function(functions: dict[str, LocalFunction], name: str) -> LocalFunction | None:
    """By logical id (CaptureRetryFunction) or by function folder (capture_retry)."""
    if name in functions:
        return functions[name]
    return next((f for f in functions.values() if f.folder == name), None)


class InvocationLog:
    """One line per invocation on stdout: time, function, trigger, outcome, duration."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, function: LocalFunction, trigger: str, outcome: str, invocation: Invocation) -> None:
        if invocation.timed_out:
            outcome += f" (exceeded its {function.timeout_seconds:g} s Timeout: AWS would have stopped it)"
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        text = f"{stamp}  {function.logical_id:<28} {trigger:<34} {outcome}  {invocation.duration_ms:.0f} ms"
        with self._lock:
            print(text, file=self._stream or sys.stdout, flush=True)

    def timed_out(self, function: LocalFunction, seconds: float) -> None:
        """Lambda's own words the moment a run passes its Timeout; its result line follows when it returns."""
        self.note(
            f"{function.logical_id:<28} Task timed out after {seconds:.2f} seconds (still running here; "
            "AWS would have stopped it and answered an error)"
        )

    def note(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        with self._lock:
            print(f"{stamp}  {text}", file=self._stream or sys.stdout, flush=True)


def summarize(result: Any, limit: int = 90) -> str:
    """A worker's answer, short enough for one log line."""
    if result is None:
        return "ok"
    if isinstance(result, dict) and "statusCode" not in result:
        # A worker's summary: its non-zero counts say what the run did.
        result = {k: v for k, v in result.items() if v not in (0, None, "", False, [], {})}
    text = result if isinstance(result, str) else _compact(result)
    return f"ok {text[: limit - 1] + '…' if len(text) > limit else text}"


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return repr(value)


class BackgroundLoops:
    """Daemon threads, one loop each, that share a stop flag: the scheduler's and the SQS pollers' lifecycle."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 30.0) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        self.join(timeout)
