"""The ledger records a failed compensation once, queues it, and alerts exactly once, even when AWS fails."""

from __future__ import annotations

import json

import boto3

from checkout.failed_compensations import OperationType
from checkout.runtime import Runtime
from tests.integration.test_confirm import FailingDynamoDB
from tests.invariants import records


def record(runtime: Runtime, order_id: str = "ord_1"):
    return runtime.ledger.record_failure(
        order_id=order_id,
        customer_id="cus_1",
        operation=OperationType.VOID_AUTHORIZATION,
        authorization_id="pi_1",
        error="cancel: 500",
    )


def queued(stack) -> list[dict]:
    response = boto3.client("sqs").receive_message(
        QueueUrl=stack.physical["FailedCompensationsQueue"]["Ref"], MaxNumberOfMessages=10
    )
    return [json.loads(m["Body"]) for m in response.get("Messages", [])]


def test_a_failure_is_recorded_queued_and_alerted_once(runtime: Runtime, stack, alerts_inbox) -> None:
    first = record(runtime)
    second = record(runtime)

    assert first is not None
    assert second is not None
    assert first.id == second.id
    [stored] = records(stack)
    assert stored["status"] == "pending"
    assert stored["retry_count"] == 0
    assert stored["max_retries"] == 3
    assert stored["alert_sent"] is True
    assert {"compensation_id": first.id} in queued(stack)
    [alert] = alerts_inbox()
    assert alert["kind"] == "compensation_failed"
    assert alert["order_id"] == "ord_1"
    assert alert["customer_id"] == "cus_1"
    assert alert["operation_type"] == "void_authorization"
    assert alert["dlq_recorded"] is True
    assert set(alert) >= {"severity", "error", "at", "compensation_id"}


def test_when_the_record_cannot_be_written_the_alert_still_goes_and_says_so(
    make_runtime, runtime: Runtime, stack, alerts_inbox
) -> None:
    broken = make_runtime(dynamodb=FailingDynamoDB(runtime.dynamodb, "put_item", failures=10))

    assert record(broken) is None

    assert records(stack) == []
    [alert] = alerts_inbox()
    assert alert["dlq_recorded"] is False
    assert alert["compensation_id"] is None
    assert "record not written" in alert["error"]
