"""Fixtures for the failed-compensation flow: a real failed compensation, the dlq_processor on the real queue."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from checkout.runtime import Runtime
from local.dynamodb_local import DynamoDBLocal
from local.fake_payment import FakeStripe
from local.fake_warehouse import FakeWarehouse
from local.template_stack import TemplateStack
from tests.conftest import ApiResponse, LambdaContext
from tests.integration.test_confirm import FailingDynamoDB, confirm, open_session
from tests.invariants import orders
from tests.sqs import EventSourceMapping


@pytest.fixture(scope="session")
def dynamodb_tables(dynamodb_local: DynamoDBLocal) -> Iterator[TemplateStack]:
    """template.yaml's tables on the session's DynamoDB Local, made once (each test starts them empty)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        tables = TemplateStack(stack_name="integration", dynamodb_endpoint_url=dynamodb_local.url).deploy_tables()
    yield tables
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        tables.delete_tables()


@pytest.fixture
def stack(
    dynamodb_local: DynamoDBLocal, dynamodb_tables: TemplateStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TemplateStack]:
    """The template's resources as AWS runs them here: tables on DynamoDB Local (AWS's emulator: transactions,
    conditions, indexes and item limits as DynamoDB applies them), queues, topics, secrets and parameters on
    in-process moto. Every DynamoDB client goes to DynamoDB Local through AWS_ENDPOINT_URL_DYNAMODB."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local.url)
    dynamodb_tables.clear_tables()
    with mock_aws():
        stack = TemplateStack(dynamodb_endpoint_url=dynamodb_local.url).deploy_services()
        stack.physical.update(dynamodb_tables.physical)
        yield stack


@dataclass(frozen=True)
class FailedOrder:
    order_id: str
    compensation_id: str
    authorization_id: str
    reservation_id: str
    customer_id: str


@pytest.fixture
def fail_compensation(
    make_runtime: Callable[..., Runtime],
    runtime: Runtime,
    api: Callable[..., ApiResponse],
    stack: TemplateStack,
    stripe: FakeStripe,
    warehouse: FakeWarehouse,
) -> Callable[..., FailedOrder]:
    """Confirms a checkout whose order write fails after authorize and whose immediate void fails too.

    The order ends COMPENSATION_FAILED with one record, one queue message and one compensation_failed alert
    (section 7, "order write fails after authorize"); the runtime is healthy again afterwards.
    """
    healthy_dynamodb = runtime.dynamodb

    def make(customer: str = "cus_1", *, release_fails: bool = False) -> FailedOrder:
        session = open_session(api, customer)
        make_runtime(dynamodb=FailingDynamoDB(healthy_dynamodb, "update_item", failures=1))
        stripe.inject("cancel", status=500, times=1)
        if release_fails:
            warehouse.inject("release", status=500, times=1)
        response = confirm(api, session["session_id"], customer)
        assert response.status == 503, response.body
        make_runtime(dynamodb=healthy_dynamodb)
        [order] = [o for o in orders(stack) if o["session_id"] == session["session_id"]]
        assert order["saga_state"] == "COMPENSATION_FAILED"
        return FailedOrder(
            order_id=order["order_id"],
            compensation_id=order["compensation_id"],
            authorization_id=order["authorization_id"],
            reservation_id=session["reservation_id"],
            customer_id=customer,
        )

    return make


@pytest.fixture
def dlq_processor(stack: TemplateStack) -> EventSourceMapping:
    """The template's SQS event (FailedCompensationsQueue → DlqProcessorFunction) over the real moto queue."""
    from functions.dlq_processor.app import lambda_handler

    function = stack.resources["DlqProcessorFunction"]["Properties"]
    [event] = function["Events"].values()
    queue_arn = str(stack.resolve(event["Properties"]["Queue"]))
    [queue] = [ids for ids in stack.physical.values() if ids.get("Arn") == queue_arn]

    def context() -> LambdaContext:
        return LambdaContext(timeout_seconds=float(function["Timeout"]), function_name="checkout-local-dlq-processor")

    return EventSourceMapping(queue["Ref"], queue_arn, lambda_handler, context)


def send(stack: TemplateStack, body: str) -> None:
    boto3.client("sqs").send_message(QueueUrl=stack.physical["FailedCompensationsQueue"]["Ref"], MessageBody=body)


def message_for(compensation_id: str) -> str:
    return json.dumps({"compensation_id": compensation_id})


def record_of(stack: TemplateStack, compensation_id: str) -> dict[str, Any]:
    from tests.invariants import records

    [record] = [r for r in records(stack) if r["id"] == compensation_id]
    return record


def order_row(stack: TemplateStack, order_id: str) -> dict[str, Any]:
    [order] = [o for o in orders(stack) if o["order_id"] == order_id]
    return order


OPERATOR_ARN = "arn:aws:iam::123456789012:user/operator"


@pytest.fixture
def admin(runtime: Runtime) -> Callable[..., ApiResponse]:
    """Calls the admin handler with a real API Gateway v2 event, IAM-authorized unless `iam=False`."""
    from functions.admin.app import lambda_handler
    from tests.apigw import http_event

    def call(method: str, path: str, **kwargs: Any) -> ApiResponse:
        kwargs.setdefault("iam", True)
        result = lambda_handler(http_event(method, path, **kwargs), LambdaContext(function_name="checkout-local-admin"))
        return ApiResponse(int(result["statusCode"]), json.loads(result["body"]), result.get("headers", {}))

    return call


def void_by_hand(stripe: FakeStripe, authorization_id: str) -> None:
    """What an operator does in the Stripe dashboard before resolving a record by hand: cancel the intent."""
    import httpx

    response = httpx.post(
        f"{stripe.url}/v1/payment_intents/{authorization_id}/cancel",
        headers={"Authorization": "Bearer sk_test_local", "Idempotency-Key": f"manual:{authorization_id}"},
    )
    assert response.status_code == 200, response.text
