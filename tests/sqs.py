"""Lambda's SQS event source mapping, played against a real (moto) queue: receive, invoke, delete what succeeded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    """The event Lambda builds from one ReceiveMessage answer (the shape of AWS's sample SQS event)."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": {
                    name: {"stringValue": value.get("StringValue"), "dataType": value["DataType"]}
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }


@dataclass
class Delivery:
    """One batch: what was received, and what the function reported failed."""

    bodies: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failed_bodies: list[str] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


class EventSourceMapping:
    """Receives up to BatchSize messages with the queue's own VisibilityTimeout, invokes, deletes the successes.

    Reported failures stay in flight, as they would for the 180 s visibility timeout; `visibility_expires()`
    makes them visible again at once instead of waiting. Redrive to the DLQ is the queue's own (maxReceiveCount).
    """

    def __init__(self, queue_url: str, queue_arn: str, handler: Handler, context: Callable[[], Any]) -> None:
        self._sqs = boto3.client("sqs")
        self._url = queue_url
        self._arn = queue_arn
        self._handler = handler
        self._context = context
        self._in_flight: list[str] = []

    def deliver(self, batch_size: int = 10, *, context: Any = None) -> Delivery:
        messages = self._sqs.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=batch_size, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return Delivery()
        response = self._handler(sqs_event(messages, self._arn), context or self._context())
        failed = [item["itemIdentifier"] for item in response.get("batchItemFailures", [])]
        for message in messages:
            if message["MessageId"] in failed:
                self._in_flight.append(message["ReceiptHandle"])
            else:
                self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message["ReceiptHandle"])
        return Delivery(
            bodies=[m["Body"] for m in messages],
            failed=failed,
            failed_bodies=[m["Body"] for m in messages if m["MessageId"] in failed],
            response=response,
        )

    def crash(self) -> None:
        """A run that dies (timeout, out of memory) after receiving: the batch stays in flight, nothing reported."""
        messages = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=10).get("Messages", [])
        self._in_flight += [m["ReceiptHandle"] for m in messages]

    def visibility_expires(self) -> None:
        """What waiting out the visibility timeout does: failed messages can be received again."""
        for handle in self._in_flight:
            self._sqs.change_message_visibility(QueueUrl=self._url, ReceiptHandle=handle, VisibilityTimeout=0)
        self._in_flight.clear()

    def drain(self, rounds: int = 10) -> list[Delivery]:
        """Deliver, let failures become visible, repeat until the queue gives nothing (or `rounds` is reached)."""
        deliveries = []
        for _ in range(rounds):
            delivery = self.deliver()
            if not delivery.bodies:
                break
            deliveries.append(delivery)
            self.visibility_expires()
        return deliveries


def queue_depth(queue_url: str) -> int:
    """Messages on a queue, visible or in flight, without receiving them (a receive counts as a delivery)."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(count) for count in attributes.values())


def peek_bodies(queue_url: str) -> list[Any]:
    """The bodies on a queue with no consumer (the DLQ), left in place: received with VisibilityTimeout=0."""
    sqs = boto3.client("sqs")
    seen: dict[str, Any] = {}
    for _ in range(10):
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        )
        new = [m for m in messages if m["MessageId"] not in seen]
        if not new:
            break
        for message in new:
            try:
                seen[message["MessageId"]] = json.loads(message["Body"])
            except ValueError:
                seen[message["MessageId"]] = message["Body"]
    return list(seen.values())
