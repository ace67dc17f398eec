"""The template's SQS event sources polled as Lambda's event source mapping does: batch, partial failures, redrive."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from local.lambdas import BackgroundLoops, Invocation, InvocationLog, LocalFunction
from local.template_stack import TemplateStack

# Lambda's default batch size for SQS, and the most one ReceiveMessage returns.
DEFAULT_BATCH_SIZE = 10
RECEIVE_MAX = 10


@dataclass(frozen=True)
class SqsTrigger:
    """One SQS event of one function."""

    function: LocalFunction
    event_name: str
    queue: str
    queue_arn: str
    queue_url: str
    batch_size: int
    enabled: bool
    report_batch_item_failures: bool


@dataclass
class BatchOutcome:
    """One poll: the messages handed to the function, and which of them were deleted."""

    received: int = 0
    deleted: int = 0
    failed: list[str] = field(default_factory=list)
    invocation: Invocation | None = None

    def public_view(self) -> dict[str, Any]:
        invocation = self.invocation
        return {
            "received": self.received,
            "deleted": self.deleted,
            "failed_message_ids": self.failed,
            "result": invocation.result if invocation else None,
            "error": f"{type(invocation.error).__name__}: {invocation.error}"
            if invocation and invocation.error
            else None,
        }


def sqs_triggers(stack: TemplateStack, functions: dict[str, LocalFunction]) -> list[SqsTrigger]:
    by_arn = {
        ids["Arn"]: (name, ids) for name, ids in stack.physical.items() if ids.get("Arn", "").startswith("arn:aws:sqs")
    }
    triggers = []
    for function in functions.values():
        for name, event in function.events_of_type("SQS").items():
            props = event.get("Properties") or {}
            arn = str(stack.resolve(props["Queue"]))
            if arn not in by_arn:
                raise ValueError(f"{function.logical_id}.{name}: queue {arn} is not one the template creates")
            queue, ids = by_arn[arn]
            responses = [str(stack.resolve(r)) for r in props.get("FunctionResponseTypes") or []]
            triggers.append(
                SqsTrigger(
                    function=function,
                    event_name=name,
                    queue=queue,
                    queue_arn=arn,
                    queue_url=ids["QueueUrl"],
                    batch_size=int(stack.resolve(props.get("BatchSize", DEFAULT_BATCH_SIZE))),
                    enabled=str(stack.resolve(props.get("Enabled", True))).lower() != "false",
                    report_batch_item_failures="ReportBatchItemFailures" in responses,
                )
            )
    return triggers


def sqs_record(message: dict[str, Any], trigger: SqsTrigger, region: str) -> dict[str, Any]:
    """One record of Lambda's SQS event, from one ReceiveMessage message."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        attribute: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
        if "StringValue" in value:
            attribute["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        attributes[name] = attribute
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": trigger.queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_ids(result: Any, message_ids: list[str]) -> list[str] | None:
    """The ids a ReportBatchItemFailures answer names; None when the answer is malformed, which Lambda
    treats as the whole batch failing."""
    if result is None or (isinstance(result, dict) and not result.get("batchItemFailures")):
        return []
    if not isinstance(result, dict) or not isinstance(result["batchItemFailures"], list):
        return None
    failed = []
    for item in result["batchItemFailures"]:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in message_ids:
            return None
        failed.append(str(identifier))
    return failed


class SqsPoller(BackgroundLoops):
    """One long-polling loop per SQS event source; failed messages reappear after the visibility timeout."""

    def __init__(self, triggers: list[SqsTrigger], log: InvocationLog, *, sqs: Any, wait_seconds: int = 1) -> None:
        super().__init__()
        self.triggers = triggers
        self._log = log
        self._sqs = sqs
        self._wait = wait_seconds
        self._locks = {(t.function.logical_id, t.event_name): threading.Lock() for t in triggers}

    def start(self) -> SqsPoller:
        for trigger in self.triggers:
            if trigger.enabled:
                self._spawn(f"sqs:{trigger.function.logical_id}", self._loop, trigger)
        return self

    def _loop(self, trigger: SqsTrigger) -> None:
        while not self._stop.is_set():
            try:
                self.poll(trigger, wait_seconds=self._wait, on_demand=False)
            except (BotoCoreError, ClientError) as exc:
                if self._stop.is_set():
                    return
                self._log.note(f"{trigger.function.logical_id}: polling {trigger.queue} failed: {exc}")
                self._stop.wait(1.0)

    def poll(self, trigger: SqsTrigger, *, wait_seconds: int = 0, on_demand: bool = True) -> BatchOutcome:
        """Receive up to BatchSize messages, invoke once, delete what succeeded."""
        with self._locks[(trigger.function.logical_id, trigger.event_name)]:
            messages = self._receive(trigger, wait_seconds)
            outcome = BatchOutcome(received=len(messages))
            if not messages:
                return outcome
            region = trigger.function.region
            event = {"Records": [sqs_record(m, trigger, region) for m in messages]}
            invocation = trigger.function.invoke(event)
            outcome.invocation = invocation
            ids = [m["MessageId"] for m in messages]
            if not invocation.ok:
                failed: list[str] | None = ids
            elif trigger.report_batch_item_failures:
                failed = failed_ids(invocation.result, ids)
            else:
                failed = []
            outcome.failed = ids if failed is None else failed
            done = [m for m in messages if m["MessageId"] not in outcome.failed]
            self._delete(trigger, done)
            outcome.deleted = len(done)
        label = f"{'run-now' if on_demand else 'sqs'} {trigger.queue} ({len(messages)})"
        if invocation.error is not None:
            text = f"ERROR {type(invocation.error).__name__}: {invocation.error}"[:100]
            result = f"{text}; {len(messages)} left for redelivery"
        elif failed is None:
            result = f"malformed batchItemFailures: whole batch left for redelivery ({len(messages)})"
        elif outcome.failed:
            result = (
                f"ok {len(outcome.failed)} of {len(messages)} failed (redelivered later), {outcome.deleted} deleted"
            )
        else:
            result = f"ok {outcome.deleted} deleted"
        self._log.line(trigger.function, label, result, invocation)
        return outcome

    def _receive(self, trigger: SqsTrigger, wait_seconds: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while len(messages) < trigger.batch_size:
            answer = self._sqs.receive_message(
                QueueUrl=trigger.queue_url,
                MaxNumberOfMessages=min(RECEIVE_MAX, trigger.batch_size - len(messages)),
                WaitTimeSeconds=wait_seconds if not messages else 0,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = answer.get("Messages", [])
            messages += received
            if len(received) < RECEIVE_MAX:
                break
        return messages

    def _delete(self, trigger: SqsTrigger, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), RECEIVE_MAX):
            chunk = messages[start : start + RECEIVE_MAX]
            self._sqs.delete_message_batch(
                QueueUrl=trigger.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
