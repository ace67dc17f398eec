"""`make run`: the whole system on 127.0.0.1 from template.yaml: moto, HTTP front, schedules, SQS pollers, fakes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TextIO

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from local.dynamodb_local import DynamoDBLocal, DynamoDBLocalError
from local.fake_payment import DEFAULT_PORT as PAYMENT_PORT
from local.fake_payment import FakeStripe
from local.fake_warehouse import DEFAULT_PORT as WAREHOUSE_PORT
from local.fake_warehouse import FakeWarehouse
from local.front import Front, http_routes
from local.lambdas import InvocationLog, LocalClock, LocalFunction, discover_functions, find_function
from local.scheduler import Scheduler, scheduled_triggers
from local.sqs_poller import SqsPoller, sqs_triggers
from local.template_stack import TemplateStack

HOST = "127.0.0.1"
FRONT_PORT = 3000
MOTO_PORT = 12100
DYNAMODB_PORT = 12120
DEFAULT_SCHEDULE_PERIOD = 10.0
DEFAULT_VISIBILITY_TIMEOUT = 5
LOCAL_PAYMENT_API_KEY = "sk_test_local"
# --fast: template parameters shortened so stale sagas and capture retries converge in minutes, not hours.
FAST_PARAMETERS = {"StaleSagaSeconds": "60", "CaptureBackoffBaseSeconds": "5", "CaptureBackoffMaxSeconds": "30"}
# Lambda has no X-Ray daemon or CloudWatch here: tracing off, metrics not printed (they would bury the log).
LOCAL_POWERTOOLS = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
# Connections each shared client keeps for the stack's concurrent invocations (the front's backlog is 128).
LOCAL_POOL_CONNECTIONS = 128
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class PortInUse(Exception):
    """A port the stack needs is taken; the message says which and how to choose another."""


class CannotStart(Exception):
    """Something the stack needs is missing (Java, DynamoDB Local); the message says what to install."""


@dataclass
class StackOptions:
    port: int = FRONT_PORT
    moto_port: int = MOTO_PORT
    dynamodb_port: int = DYNAMODB_PORT
    # An already-running DynamoDB Local to use instead of starting one (the stack's tables are made there at
    # start and dropped at stop, so a test session can share one instance between stacks of other names).
    dynamodb_endpoint: str | None = None
    stack_name: str = "checkout-local"
    payment_port: int = PAYMENT_PORT
    warehouse_port: int = WAREHOUSE_PORT
    schedule_period: float = DEFAULT_SCHEDULE_PERIOD
    visibility_timeout_override: int | None = DEFAULT_VISIBILITY_TIMEOUT
    fast: bool = True
    log_level: str = "WARNING"
    parameters: dict[str, str] = field(default_factory=dict)
    region: str = "us-east-1"

    def template_parameters(self, payment_url: str, warehouse_url: str) -> dict[str, str]:
        parameters = {
            "PaymentApiBaseUrl": payment_url,
            "WarehouseApiBaseUrl": warehouse_url,
            "LogLevel": self.log_level,
        }
        if self.fast:
            parameters.update(FAST_PARAMETERS)
        parameters.update(self.parameters)
        return parameters


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer that reports a failed bind instead of leaving start() waiting forever."""

    error: OSError | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except OSError as exc:
            self.error = exc
            self._server_ready_event.set()

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.server_close()  # moto only shuts the loop down; free the port too


class LocalStack:
    """Everything `make run` starts, in one process; also what `make demo` starts when no stack answers."""

    def __init__(self, options: StackOptions | None = None, *, out: TextIO | None = None) -> None:
        self.options = options or StackOptions()
        self.out = out or sys.stdout
        self.log = InvocationLog(self.out)
        self.clock = LocalClock()
        self.moto: _MotoServer | None = None
        self.moto_url = ""
        self.dynamodb: DynamoDBLocal | None = None
        self.dynamodb_url = ""
        self.payment: FakeStripe | None = None
        self.warehouse: FakeWarehouse | None = None
        self.stack: TemplateStack | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.front: Front | None = None
        self.scheduler: Scheduler | None = None
        self.poller: SqsPoller | None = None
        self.parameters: dict[str, str] = {}
        self.visibility: dict[str, tuple[int, int]] = {}
        self.env_conflicts: list[str] = []
        self._saved_env: dict[str, str | None] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self.options
        ensure_ports_free(
            [
                ("HTTP front", opts.port, "--port"),
                ("moto server", opts.moto_port, "--moto-port"),
                *([] if opts.dynamodb_endpoint else [("DynamoDB Local", opts.dynamodb_port, "--dynamodb-port")]),
                ("fake payment provider", opts.payment_port, "--payment-port"),
                ("fake warehouse", opts.warehouse_port, "--warehouse-port"),
            ]
        )
        self._start_moto()
        self._start_dynamodb()
        self.payment = _start_fake(FakeStripe(opts.payment_port), "fake payment provider", "--payment-port")
        self.warehouse = _start_fake(FakeWarehouse(opts.warehouse_port), "fake warehouse", "--warehouse-port")

        self.parameters = opts.template_parameters(self.payment.url, self.warehouse.url)
        self.stack = TemplateStack(
            stack_name=opts.stack_name,
            parameters=self.parameters,
            region=opts.region,
            endpoint_url=self.moto_url,
            dynamodb_endpoint_url=self.dynamodb_url,
        )
        try:
            self.stack.deploy()
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException" or not opts.dynamodb_endpoint:
                raise
            raise CannotStart(
                f"{exc.response['Error']['Message']} on {self.dynamodb_url}: another stack named "
                f"{opts.stack_name!r} uses that DynamoDB Local; pass another --stack-name"
            ) from exc
        self._override_visibility()

        self.functions = discover_functions(self.stack)
        self._set_environment()
        self._install_runtime()
        for function in self.functions.values():
            function.load()
            function.on_timeout = self.log.timed_out

        routes = http_routes(self.stack, self.functions)
        try:
            self.front = Front(opts.port, routes, self, self.log, account=self.stack.account, clock=self.clock)
        except OSError as exc:
            raise PortInUse(_port_message("HTTP front", opts.port, "--port", exc)) from exc
        self.front.start()
        self.scheduler = Scheduler(
            scheduled_triggers(self.stack, self.functions), self.log, period=opts.schedule_period, clock=self.clock
        ).start()
        sqs = boto3.client("sqs", region_name=opts.region, endpoint_url=self.moto_url)
        self.poller = SqsPoller(sqs_triggers(self.stack, self.functions), self.log, sqs=sqs).start()

    def _start_moto(self) -> None:
        # Werkzeug would log every AWS call, and a traceback for each call moto does not implement (an
        # operator tool probing start_message_move_task); the invocation log is what a developer reads.
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        self.moto = _MotoServer(ip_address=HOST, port=self.options.moto_port, verbose=False)
        self.moto.start()
        if self.moto.error is not None:
            error, self.moto = self.moto.error, None
            raise PortInUse(_port_message("moto server", self.options.moto_port, "--moto-port", error))
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # Every boto3 client of this process (the functions' included) talks to moto with fake credentials.
        self._setenv(
            {
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_DEFAULT_REGION": self.options.region,
                "AWS_REGION": self.options.region,
                **FAKE_CREDENTIALS,
            }
        )
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
            self._setenv({name: None})

    def _start_dynamodb(self) -> None:
        """AWS's DynamoDB Local (moto's DynamoDB copies the table on every transaction and is not thread-safe);
        botocore sends every DynamoDB call there through AWS_ENDPOINT_URL_DYNAMODB, the rest goes to moto."""
        if self.options.dynamodb_endpoint:
            self.dynamodb_url = self.options.dynamodb_endpoint.rstrip("/")
        else:
            try:
                self.dynamodb = DynamoDBLocal(self.options.dynamodb_port, host=HOST).start()
            except DynamoDBLocalError as exc:
                if "BindException" in str(exc) or "Address already in use" in str(exc):
                    port = self.options.dynamodb_port
                    raise PortInUse(_port_message("DynamoDB Local", port, "--dynamodb-port")) from exc
                raise CannotStart(str(exc)) from exc
            self.dynamodb_url = self.dynamodb.url
        self._setenv({"AWS_ENDPOINT_URL_DYNAMODB": self.dynamodb_url})

    def _override_visibility(self) -> None:
        seconds = self.options.visibility_timeout_override
        assert self.stack is not None
        if seconds is None:
            return
        sqs = boto3.client("sqs", region_name=self.options.region, endpoint_url=self.moto_url)
        for name in self.stack.of_type("AWS::SQS::Queue"):
            url = self.stack.physical[name]["QueueUrl"]
            current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(seconds)})
            self.visibility[name] = (int(current["VisibilityTimeout"]), seconds)

    def _set_environment(self) -> None:
        """One environment for the process: every function's (they share the template's Globals), with the
        provider URLs and key pointed at the fakes. A variable two functions set differently is reported."""
        assert self.stack is not None
        merged: dict[str, str] = {}
        owner: dict[str, str] = {}
        for logical_id in self.functions:
            for key, value in self.stack.environment(logical_id).items():
                if key in merged and merged[key] != value:
                    self.env_conflicts.append(f"{key}: {owner[key]} has {merged[key]!r}, {logical_id} has {value!r}")
                    continue
                merged.setdefault(key, value)
                owner.setdefault(key, logical_id)
        merged.update(
            PAYMENT_API_KEY=LOCAL_PAYMENT_API_KEY,
            PAYMENT_API_BASE_URL=self.parameters["PaymentApiBaseUrl"],
            WAREHOUSE_API_BASE_URL=self.parameters["WarehouseApiBaseUrl"],
            **LOCAL_POWERTOOLS,
        )
        self._setenv(dict(merged))

    def _install_runtime(self) -> None:
        """One Runtime for every function: they run in this one process and share checkout.runtime's cache, so
        it is built once from the shared environment with the stack's clock (which /_local/clock moves)."""
        import httpx
        from botocore.config import Config

        from checkout.config import Settings
        from checkout.runtime import AWS_CONFIG, Runtime, use_runtime

        # On Lambda every execution environment has its own clients, each serving one request at a time; here
        # one Runtime serves every concurrent invocation, so its connection pools are sized for that (botocore
        # keeps 10 connections, httpx 20 alive: past that each call would open and drop a connection).
        pooled = AWS_CONFIG.merge(Config(max_pool_connections=LOCAL_POOL_CONNECTIONS))
        runtime = Runtime(
            Settings.from_environ(),
            clock=self.clock,
            dynamodb=boto3.client("dynamodb", config=pooled),
            sqs=boto3.client("sqs", config=pooled),
            sns=boto3.client("sns", config=pooled),
        )
        limits = httpx.Limits(max_connections=LOCAL_POOL_CONNECTIONS, max_keepalive_connections=LOCAL_POOL_CONNECTIONS)
        runtime.http = httpx.Client(transport=httpx.HTTPTransport(retries=0, limits=limits))  # as Runtime.http, pooled
        use_runtime(runtime)

    def _setenv(self, values: dict[str, str | None]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def stop(self) -> None:
        """Stop accepting, wake calls asleep in a provider delay, let running invocations end, stop moto."""
        if self.front is not None:
            self.front.stop()
            self.front = None
        for worker in (self.scheduler, self.poller):
            if worker is not None:
                worker.request_stop()
        for fake in (self.payment, self.warehouse):
            if fake is not None:
                fake.stop()
        for worker in (self.scheduler, self.poller):
            if worker is not None:
                worker.join()
        self.scheduler = self.poller = None
        self.payment = self.warehouse = None
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        if self.dynamodb is not None:
            self.dynamodb.stop()
            self.dynamodb = None
        elif self.stack is not None and self.dynamodb_url:
            with contextlib.suppress(Exception):  # a shared instance: leave it as we found it
                self.stack.delete_tables()
        with contextlib.suppress(ImportError):
            from checkout.runtime import use_runtime

            use_runtime(None)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what runs where -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.front is not None
        return self.front.url

    def describe(self) -> dict[str, Any]:
        assert self.stack is not None
        assert self.payment is not None
        assert self.warehouse is not None
        return {
            "api": self.url,
            "moto": self.moto_url,
            "dynamodb": self.dynamodb_url,
            "payment": self.payment.url,
            "warehouse": self.warehouse.url,
            "region": self.stack.region,
            "account": self.stack.account,
            "stack_name": self.stack.stack_name,
            "parameters": self.parameters,
            "resources": self.stack.physical,
            "schedule_period_seconds": self.options.schedule_period,
            "visibility_timeout_override": self.options.visibility_timeout_override,
            "functions": self.functions_view(),
            "clock": self.clock_view(),
            # What a load test samples for the stack's memory: this process and the DynamoDB Local it started.
            "processes": {"stack": os.getpid(), "dynamodb_local": None if self.dynamodb is None else self.dynamodb.pid},
        }

    def functions_view(self) -> list[dict[str, Any]]:
        views = []
        for function in self.functions.values():
            views.append(
                {
                    "logical_id": function.logical_id,
                    "folder": function.folder,
                    "function_name": function.function_name,
                    "handler": f"{function.module}.{function.attribute}",
                    "timeout_seconds": function.timeout_seconds,
                    "triggers": self._triggers_of(function),
                }
            )
        return views

    def _triggers_of(self, function: LocalFunction) -> list[dict[str, Any]]:
        triggers: list[dict[str, Any]] = []
        if self.front is not None:
            for route in self.front.routes:
                if route.function is function:
                    triggers.append({"type": "HttpApi", "route": route.route_key, "iam": route.iam})
        if self.scheduler is not None:
            for schedule in self.scheduler.triggers:
                if schedule.function is function:
                    triggers.append(
                        {
                            "type": schedule.kind,
                            "expression": schedule.expression,
                            "enabled": schedule.enabled,
                            "local_period_seconds": self.options.schedule_period,
                        }
                    )
        if self.poller is not None:
            for source in self.poller.triggers:
                if source.function is function:
                    triggers.append(
                        {
                            "type": "SQS",
                            "queue": source.queue,
                            "batch_size": source.batch_size,
                            "enabled": source.enabled,
                            "report_batch_item_failures": source.report_batch_item_failures,
                        }
                    )
        return triggers

    # ---- LocalControl: /_local/ endpoints --------------------------------------------------------

    def list_functions(self) -> list[dict[str, Any]]:
        return self.functions_view()

    def run(self, name: str) -> tuple[int, dict[str, Any]]:
        """Run a worker now: each of its schedules fires once, each of its SQS sources is polled once."""
        function = find_function(self.functions, name)
        if function is None:
            known = ", ".join(f"{f.logical_id} ({f.folder})" for f in self.functions.values())
            return 404, {"error": "function_not_found", "message": f"no function {name!r}; known: {known}"}
        assert self.scheduler is not None
        assert self.poller is not None
        runs: list[dict[str, Any]] = []
        failed = False
        for schedule in (t for t in self.scheduler.triggers if t.function is function):
            invocation = self.scheduler.fire(schedule, on_demand=True)
            failed |= not invocation.ok
            runs.append(
                {
                    "trigger": f"{schedule.kind} {schedule.event_name}",
                    # A schedule the template switches off still runs when asked to, as `aws lambda invoke` would.
                    "schedule_enabled": schedule.enabled,
                    "result": invocation.result,
                    "error": _error_text(invocation.error),
                    "duration_ms": round(invocation.duration_ms),
                }
            )
        for source in (t for t in self.poller.triggers if t.function is function):
            outcome = self.poller.poll(source)
            failed |= outcome.invocation is not None and not outcome.invocation.ok
            runs.append({"trigger": f"SQS {source.event_name}", **outcome.public_view()})
        if not runs:
            message = f"{function.logical_id} has no Schedule or SQS event; call its HTTP routes instead"
            return 409, {"error": "not_runnable", "message": message}
        return (500 if failed else 200), {"function": function.logical_id, "runs": runs}

    def advance_clock(self, advance_seconds: float | None) -> dict[str, Any]:
        if advance_seconds is not None:
            self.clock.advance(advance_seconds)
            self.log.note(f"clock moved forward {advance_seconds:g} s (offset now {self.clock.offset:g} s)")
        return self.clock_view()

    def clock_view(self) -> dict[str, Any]:
        now = datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"offset_seconds": self.clock.offset, "now": now}

    def _dynamodb_note(self) -> str:
        own = "in memory, " if self.dynamodb is not None else "shared instance, "
        pid = f"pid {self.dynamodb.pid}; " if self.dynamodb is not None else ""
        return f"AWS's emulator, {own}{pid}AWS_ENDPOINT_URL_DYNAMODB"

    def banner(self) -> str:
        assert self.stack is not None
        assert self.front is not None
        assert self.scheduler is not None
        assert self.poller is not None
        assert self.payment is not None
        assert self.warehouse is not None
        rows = [
            ("HTTP API (front)", self.url, "the template's HttpApi routes, API Gateway v2 events"),
            ("local endpoints", f"{self.url}/_local/", "functions, run/<function>, clock, stack, health"),
            ("DynamoDB Local", self.dynamodb_url, self._dynamodb_note()),
            ("moto (AWS APIs)", self.moto_url, "SQS, SNS, Secrets Manager, SSM"),
            ("fake payment", self.payment.url, "Stripe PaymentIntents; POST /_faults, GET /_ledger"),
            ("fake warehouse", self.warehouse.url, "reservations; POST /_faults, GET /_ledger"),
        ]
        lines = ["checkout local stack: template.yaml on 127.0.0.1 (no Docker, no AWS account)", ""]
        lines += [f"  {what:<18} {where:<26} {note}" for what, where, note in rows]
        lines += ["", f"  {'function':<28} trigger"]
        for function in self.functions.values():
            for index, trigger in enumerate(self._triggers_of(function) or [{"type": "(none)"}]):
                name = function.logical_id if index == 0 else ""
                lines.append(f"  {name:<28} {_trigger_text(trigger, self.options.schedule_period)}")
        lines += ["", f"  {'resource':<28} {'type':<28} name (tables on DynamoDB Local, the rest on moto)"]
        for name, ids in self.stack.physical.items():
            kind = self.stack.resources[name]["Type"]
            lines.append(f"  {name:<28} {kind:<28} {ids.get('QueueName', ids['Ref'])}")
        lines.append("")
        overrides = " ".join(f"{k}={v}" for k, v in self.parameters.items() if not k.endswith("ApiBaseUrl"))
        lines.append(f"  parameters{' (--fast)' if self.options.fast else ''}: {overrides}")
        for queue, (before, after) in self.visibility.items():
            props = self.stack.resources[queue].get("Properties", {})
            source = "in the template" if "VisibilityTimeout" in props else "by SQS default"
            lines.append(
                f"  visibility timeout: {queue} {before} s {source}, {after} s locally (--visibility-timeout-override)"
            )
        for conflict in self.env_conflicts:
            lines.append(f"  WARNING: environment differs between functions; the process keeps the first: {conflict}")
        if any(route.iam for route in self.front.routes):
            lines.append(
                "  WARNING: IAM authorization is NOT enforced locally: AWS_IAM routes accept any request and see "
                "the fixed identity arn:aws:iam::123456789012:user/local-developer."
            )
        lines += ["", "ready: one line per invocation below; Ctrl-C to stop", ""]
        return "\n".join(lines)


def _trigger_text(trigger: dict[str, Any], period: float) -> str:
    kind = trigger["type"]
    if kind == "HttpApi":
        return f"HTTP {trigger['route']}{' (AWS_IAM)' if trigger['iam'] else ''}"
    if kind in ("Schedule", "ScheduleV2"):
        state = f"every {period:g} s locally" if trigger["enabled"] else "disabled (by the template and its parameters)"
        return f"{kind} {trigger['expression']} -> {state}; POST /_local/run/<name> runs it now"
    if kind == "SQS":
        failures = ", ReportBatchItemFailures" if trigger["report_batch_item_failures"] else ""
        return f"SQS {trigger['queue']} (batch {trigger['batch_size']}{failures})"
    return str(kind)


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _start_fake[F: (FakeStripe, FakeWarehouse)](fake: F, what: str, flag: str) -> F:
    try:
        return fake.start()
    except OSError as exc:
        raise PortInUse(_port_message(what, fake._port, flag, exc)) from exc


def _port_message(what: str, port: int, flag: str, error: OSError | None = None) -> str:
    reason = f" ({error.strerror})" if error is not None and error.strerror else ""
    return (
        f"port {port} on {HOST} is already in use{reason}: the {what} cannot start. "
        f"Stop whatever uses it, or pass {flag} <port>."
    )


def ensure_ports_free(ports: Sequence[tuple[str, int, str]]) -> None:
    """Fails before anything starts when a fixed port is taken (0 = any free port)."""
    for what, port, flag in ports:
        if port == 0:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError as exc:
                raise PortInUse(_port_message(what, port, flag, exc)) from exc


def parse_args(argv: Sequence[str] | None) -> StackOptions:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack", description="Run the checkout system on 127.0.0.1, built from template.yaml."
    )
    parser.add_argument("--port", type=int, default=FRONT_PORT, help=f"HTTP front (default {FRONT_PORT})")
    parser.add_argument("--moto-port", type=int, default=MOTO_PORT, help=f"moto server (default {MOTO_PORT})")
    parser.add_argument(
        "--dynamodb-port", type=int, default=DYNAMODB_PORT, help=f"DynamoDB Local (default {DYNAMODB_PORT})"
    )
    parser.add_argument(
        "--dynamodb-endpoint",
        metavar="URL",
        help="use this running DynamoDB Local instead of starting one (the stack makes and drops its tables there)",
    )
    parser.add_argument(
        "--stack-name", default="checkout-local", help="prefix of every resource name (default checkout-local)"
    )
    parser.add_argument("--payment-port", type=int, default=PAYMENT_PORT, help=f"fake payment (default {PAYMENT_PORT})")
    parser.add_argument(
        "--warehouse-port", type=int, default=WAREHOUSE_PORT, help=f"fake warehouse (default {WAREHOUSE_PORT})"
    )
    parser.add_argument(
        "--schedule-period",
        type=float,
        default=DEFAULT_SCHEDULE_PERIOD,
        help=f"seconds between local runs of every schedule, whatever its rate (default {DEFAULT_SCHEDULE_PERIOD:g})",
    )
    parser.add_argument(
        "--visibility-timeout-override",
        type=int,
        default=DEFAULT_VISIBILITY_TIMEOUT,
        help=f"every queue's VisibilityTimeout locally, so failed messages come back quickly (default "
        f"{DEFAULT_VISIBILITY_TIMEOUT}); -1 keeps the template's",
    )
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shorten stale period and capture backoff: " + ", ".join(f"{k}={v}" for k, v in FAST_PARAMETERS.items()),
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="the functions' Powertools log level (template parameter LogLevel; default WARNING)",
    )
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override any template parameter, e.g. --parameter CompensationMaxRetries=2 (repeatable)",
    )
    args = parser.parse_args(argv)
    parameters = {}
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--parameter expects NAME=VALUE, got {item!r}")
        parameters[name] = value
    return StackOptions(
        port=args.port,
        moto_port=args.moto_port,
        dynamodb_port=args.dynamodb_port,
        dynamodb_endpoint=args.dynamodb_endpoint,
        stack_name=args.stack_name,
        payment_port=args.payment_port,
        warehouse_port=args.warehouse_port,
        schedule_period=args.schedule_period,
        visibility_timeout_override=None if args.visibility_timeout_override < 0 else args.visibility_timeout_override,
        fast=args.fast,
        log_level=args.log_level,
        parameters=parameters,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    # A plain flag, not a threading.Event: the handler runs in the main thread, and Event.set() there can
    # deadlock on the lock the main thread holds inside Event.wait() when the signal lands.
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = LocalStack(options)
    try:
        stack.start()
    except (PortInUse, CannotStart) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(stack.banner(), flush=True)
    while not stopping:
        time.sleep(0.2)
    print("stopping: front, schedules, pollers, fakes, moto, DynamoDB Local ...", flush=True)
    stack.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
