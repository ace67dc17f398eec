"""Shared fixtures: moto built from template.yaml, fake providers on 127.0.0.1, a clock, a Lambda context."""

from __future__ import annotations

import os

# Powertools reads these when the shared Logger/Metrics are built at import, as Lambda's environment does.
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "checkout")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "CheckoutTest")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from checkout.config import Settings
from checkout.runtime import AWS_CONFIG, Runtime, use_runtime
from local.dynamodb_local import DynamoDBLocal
from local.fake_payment import FakeStripe
from local.fake_warehouse import FakeWarehouse
from local.template_stack import TemplateStack
from tests.apigw import http_event


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "checkout")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CheckoutTest")
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    yield
    use_runtime(None)


class Clock:
    """Wall time that tests move forward instead of waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def warehouse() -> Iterator[FakeWarehouse]:
    with FakeWarehouse() as fake:
        yield fake


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local (AWS's emulator) for the whole session; each test makes and drops its own tables."""
    with DynamoDBLocal() as ddb:
        yield ddb


@pytest.fixture
def stack() -> Iterator[TemplateStack]:
    with mock_aws():
        yield TemplateStack().deploy()


@pytest.fixture
def alerts_inbox(stack: TemplateStack) -> Callable[[], list[dict[str, Any]]]:
    """Subscribes a queue to the alerts topic, as an operator's pager integration would."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns").subscribe(TopicArn=stack.physical["AlertsTopic"]["Ref"], Protocol="sqs", Endpoint=arn)
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        while True:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return list(seen)
            for message in messages:
                envelope = json.loads(message["Body"])
                seen.append(
                    {
                        "subject": envelope.get("Subject"),
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                        **json.loads(envelope["Message"]),
                    }
                )
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    return read


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def env(
    stack: TemplateStack, stripe: FakeStripe, warehouse: FakeWarehouse, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment template.yaml gives confirm_checkout, pointed at the fakes."""
    environment = stack.environment("ConfirmCheckoutFunction")
    environment.update(
        PAYMENT_API_BASE_URL=stripe.url,
        PAYMENT_API_KEY="sk_test_local",
        WAREHOUSE_API_BASE_URL=warehouse.url,
        # Short budgets keep timeout tests quick; the logic is the same at 15 s.
        PAYMENT_TIMEOUT_SECONDS="2",
    )
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return environment


class SerializedClient:
    """A boto3 client whose calls run one at a time.

    moto's in-process DynamoDB is not thread-safe (a Query racing an UpdateItem can fail inside moto), while
    the real service is; the workers call it from several threads, so tests serialize the emulator only.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if not callable(real) or name.startswith("_") or name in ("meta", "exceptions"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return real(*args, **kwargs)

        return call


@pytest.fixture
def make_runtime(env: dict[str, str], clock: Clock) -> Callable[..., Runtime]:
    dynamodb = SerializedClient(boto3.client("dynamodb", config=AWS_CONFIG))

    def build(**overrides: Any) -> Runtime:
        settings = Settings.from_environ({**env, **{k: str(v) for k, v in overrides.pop("settings", {}).items()}})
        overrides.setdefault("dynamodb", dynamodb)
        runtime = Runtime(settings, clock=clock, **overrides)
        use_runtime(runtime)
        return runtime

    return build


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


@dataclass
class LambdaContext:
    """The Lambda context's documented fields, with a real countdown."""

    timeout_seconds: float = 28.0
    function_name: str = "checkout-local-confirm-checkout"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:checkout-local-confirm-checkout"
    # Unique per invocation, as Lambda makes it: a worker run's lease owner is named after it.
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/checkout-local-confirm-checkout"
    log_stream_name: str = "local"

    def __post_init__(self) -> None:
        self._end = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._end - time.monotonic()) * 1000))


@pytest.fixture
def lambda_context() -> Callable[..., LambdaContext]:
    return LambdaContext


@dataclass
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@pytest.fixture
def api(runtime: Runtime) -> Callable[..., ApiResponse]:
    """Calls confirm_checkout's handler with a real API Gateway v2 event."""
    from functions.confirm_checkout.app import lambda_handler

    def call(method: str, path: str, **kwargs: Any) -> ApiResponse:
        timeout = kwargs.pop("timeout_seconds", 28.0)
        result = lambda_handler(http_event(method, path, **kwargs), LambdaContext(timeout_seconds=timeout))
        return ApiResponse(int(result["statusCode"]), json.loads(result["body"]), result.get("headers", {}))

    return call
