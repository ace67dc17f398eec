"""The failed-compensations dead-letter queue: its depth, and redrive back to the source queue (CLI, admin API)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from checkout.errors import CheckoutError

# A receive-and-send redrive stops after this many messages even if more keep arriving.
MAX_FALLBACK_MOVES = 10_000
# How long a message the fallback is moving stays invisible on the DLQ (send + delete take far less).
FALLBACK_VISIBILITY_SECONDS = 60
_DEPTH_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]


def move_task_unsupported(exc: Exception) -> bool:
    """True when the endpoint does not implement StartMessageMoveTask, so receive-and-send must do instead.

    moto answers exactly two ways: in-process (mock_aws) it raises NotImplementedError("The
    start_message_move_task action has not been implemented"); as a server (the local stack) it answers an
    HTML 500 page, which botocore reports as a ClientError whose code is the bare status "500". AWS itself
    never answers a bare "500" (its errors carry a code such as InternalError), so a real failure is not
    mistaken for a missing call and is raised instead.
    """
    if isinstance(exc, NotImplementedError):
        return "has not been implemented" in str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return error.get("Code") == "500" and "Internal Server Error" in str(error.get("Message", ""))
    return False


def queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def redrive_dlq(sqs: Any, *, dlq_url: str, queue_url: str, max_per_second: int | None = None) -> dict[str, Any]:
    """Move every DLQ message back to the source queue: SQS's own move task, or receive-and-send where it is missing."""
    source, destination = queue_arn(sqs, dlq_url), queue_arn(sqs, queue_url)
    request: dict[str, Any] = {"SourceArn": source, "DestinationArn": destination}
    if max_per_second is not None:
        request["MaxNumberOfMessagesPerSecond"] = max_per_second
    try:
        task = sqs.start_message_move_task(**request)
    except (NotImplementedError, ClientError) as exc:
        if not move_task_unsupported(exc):
            raise
    else:
        return {
            "method": "start_message_move_task",
            "task_handle": task["TaskHandle"],
            "source_arn": source,
            "destination_arn": destination,
            "status": f"aws sqs list-message-move-tasks --source-arn {source}",
        }
    moved = _receive_and_send(sqs, dlq_url=dlq_url, queue_url=queue_url)
    return {"method": "receive_and_send", "moved": moved, "source_arn": source, "destination_arn": destination}


def _receive_and_send(sqs: Any, *, dlq_url: str, queue_url: str) -> int:
    """Send each message to the source queue, then delete it from the DLQ: at least once, never lost.

    A crash between the two leaves a duplicate, which the dlq_processor handles (the record is the truth).
    """
    moved = 0
    while moved < MAX_FALLBACK_MOVES:
        messages = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=FALLBACK_VISIBILITY_SECONDS,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return moved
        for message in messages:
            attributes = {
                name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
                for name, value in message.get("MessageAttributes", {}).items()
            }
            sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=message["Body"],
                **({"MessageAttributes": attributes} if attributes else {}),
            )
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved


def queue_depth(sqs: Any, url: str) -> dict[str, int]:
    """Messages waiting (visible) and in flight (received, not yet deleted) on one queue; both approximate."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=_DEPTH_ATTRIBUTES)["Attributes"]
    return {
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    }


def move_tasks(sqs: Any, dlq_url: str) -> list[dict[str, Any]] | None:
    """The DLQ's recent redrive (message move) tasks, newest first; None where the endpoint has none (moto)."""
    try:
        tasks = sqs.list_message_move_tasks(SourceArn=queue_arn(sqs, dlq_url), MaxResults=5).get("Results", [])
    except (NotImplementedError, ClientError) as exc:
        if move_task_unsupported(exc):
            return None
        raise
    keep = (
        "Status",
        "TaskHandle",
        "ApproximateNumberOfMessagesMoved",
        "ApproximateNumberOfMessagesToMove",
        "StartedTimestamp",
        "FailureReason",
    )
    return [{key: task[key] for key in keep if key in task} for task in tasks]


class DeadLetters:
    """The admin API's view of the DLQ: how deep it is (and the queue it redrives to), and a redrive."""

    def __init__(self, *, sqs: Any, dlq_url: str | None, queue_url: str) -> None:
        self._sqs = sqs
        self._dlq_url = dlq_url
        self._queue_url = queue_url

    def _dlq(self) -> str:
        if not self._dlq_url:
            raise DlqNotConfigured("FAILED_COMPENSATIONS_DLQ_URL is not set for this function")
        return self._dlq_url

    def status(self) -> dict[str, Any]:
        dlq = self._dlq()
        try:
            return {
                "dlq": queue_depth(self._sqs, dlq),
                "queue": queue_depth(self._sqs, self._queue_url),
                "redrive_tasks": move_tasks(self._sqs, dlq),
            }
        except (ClientError, BotoCoreError) as exc:
            raise DlqUnavailable(f"SQS did not answer: {exc}") from exc

    def redrive(self, *, max_per_second: int | None = None) -> dict[str, Any]:
        dlq = self._dlq()
        try:
            return redrive_dlq(self._sqs, dlq_url=dlq, queue_url=self._queue_url, max_per_second=max_per_second)
        except (ClientError, BotoCoreError) as exc:
            raise DlqUnavailable(f"SQS refused the redrive: {exc}") from exc


class DlqNotConfigured(CheckoutError):
    status, code = 500, "dlq_not_configured"


class DlqUnavailable(CheckoutError):
    status, code = 503, "queue_unavailable"
