"""The SQS event sources behave as Lambda's event source mapping: batches, partial failures, redrive to the DLQ."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from local.lambdas import InvocationLog, LocalFunction
from local.sqs_poller import SqsPoller, SqsTrigger, failed_ids
from local.template_stack import TemplateStack
from tests.local_stack.functions import local_function


def consumer(handler: Any) -> LocalFunction:
    function = local_function("Consumer", module="unused")
    function.handler = handler
    return function


def trigger(stack: TemplateStack, function: LocalFunction, *, batch_size: int = 10, report: bool = True) -> SqsTrigger:
    queue = stack.physical["FailedCompensationsQueue"]
    return SqsTrigger(
        function=function,
        event_name="Queue",
        queue="FailedCompensationsQueue",
        queue_arn=queue["Arn"],
        queue_url=queue["QueueUrl"],
        batch_size=batch_size,
        enabled=True,
        report_batch_item_failures=report,
    )


def send(stack: TemplateStack, *bodies: str) -> None:
    sqs = boto3.client("sqs")
    for body in bodies:
        sqs.send_message(QueueUrl=stack.physical["FailedCompensationsQueue"]["QueueUrl"], MessageBody=body)


def bodies_in(stack: TemplateStack, queue: str) -> list[str]:
    sqs = boto3.client("sqs")
    url = stack.physical[queue]["QueueUrl"]
    found = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            found.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return sorted(found)


@pytest.fixture
def instant_redelivery(stack: TemplateStack) -> TemplateStack:
    """A failed message is visible again at once, so redelivery needs no waiting."""
    boto3.client("sqs").set_queue_attributes(
        QueueUrl=stack.physical["FailedCompensationsQueue"]["QueueUrl"], Attributes={"VisibilityTimeout": "0"}
    )
    return stack


def test_reported_failures_are_redelivered_until_the_redrive_policy_moves_them_to_the_dlq(
    instant_redelivery: TemplateStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a batch where one message always fails, and the template's maxReceiveCount (3)
    stack = instant_redelivery
    seen: list[list[str]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append([r["body"] for r in event["Records"]])
        bad = [r["messageId"] for r in event["Records"] if r["body"] == "bad"]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in bad]}

    send(stack, "good-1", "bad", "good-2")
    source = trigger(stack, consumer(handler))
    poller = SqsPoller([source], InvocationLog(), sqs=boto3.client("sqs"))

    # When the source is polled until nothing is left
    outcomes = [poller.poll(source) for _ in range(5)]

    # Then the good messages were deleted at once, the bad one was delivered 3 times, then moved to the DLQ
    assert sorted(seen[0]) == ["bad", "good-1", "good-2"]
    assert seen[1:] == [["bad"], ["bad"]]
    assert [o.received for o in outcomes] == [3, 1, 1, 0, 0]
    assert outcomes[0].deleted == 2
    assert bodies_in(stack, "FailedCompensationsDLQ") == ["bad"]
    assert bodies_in(stack, "FailedCompensationsQueue") == []
    assert "1 of 3 failed" in capsys.readouterr().out


def test_a_function_error_leaves_the_whole_batch_for_redelivery(instant_redelivery: TemplateStack) -> None:
    stack = instant_redelivery

    def handler(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    send(stack, "a", "b")
    source = trigger(stack, consumer(handler))
    outcome = SqsPoller([source], InvocationLog(), sqs=boto3.client("sqs")).poll(source)

    assert outcome.received == 2
    assert outcome.deleted == 0
    assert len(outcome.failed) == 2
    assert bodies_in(stack, "FailedCompensationsQueue") == ["a", "b"]


def test_batch_size_bounds_one_invocation(instant_redelivery: TemplateStack) -> None:
    stack = instant_redelivery
    sizes: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        sizes.append(len(event["Records"]))
        return {"batchItemFailures": []}

    send(stack, *[json.dumps({"n": n}) for n in range(5)])
    source = trigger(stack, consumer(handler), batch_size=2)
    poller = SqsPoller([source], InvocationLog(), sqs=boto3.client("sqs"))
    while poller.poll(source).received:
        pass

    assert sizes == [2, 2, 1]


def test_records_look_like_lambdas_sqs_event(instant_redelivery: TemplateStack) -> None:
    stack = instant_redelivery
    records: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> None:
        records.extend(event["Records"])

    send(stack, '{"compensation_id": "fc_1"}')
    source = trigger(stack, consumer(handler))
    SqsPoller([source], InvocationLog(), sqs=boto3.client("sqs")).poll(source)

    (record,) = records
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == stack.physical["FailedCompensationsQueue"]["Arn"]
    assert record["body"] == '{"compensation_id": "fc_1"}'
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"messageId", "receiptHandle", "md5OfBody", "awsRegion", "messageAttributes"} <= set(record)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, []),
        ({"batchItemFailures": []}, []),
        ({"batchItemFailures": [{"itemIdentifier": "m2"}]}, ["m2"]),
        # Lambda fails the whole batch when the answer names no message of it.
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, None),
        ({"batchItemFailures": [{"itemIdentifier": "other"}]}, None),
        ({"batchItemFailures": "m2"}, None),
    ],
)
def test_batch_item_failures_are_read_as_lambda_reads_them(result: Any, expected: list[str] | None) -> None:
    assert failed_ids(result, ["m1", "m2"]) == expected
