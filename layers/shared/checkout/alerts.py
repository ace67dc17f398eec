"""Operator alerts on the SNS topic, in the one shape section 5 fixes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol


class AlertKind(StrEnum):
    COMPENSATION_FAILED = "compensation_failed"
    COMPENSATION_EXHAUSTED = "compensation_exhausted"


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    severity: str
    order_id: str
    customer_id: str | None
    compensation_id: str | None
    operation_type: str
    error: str
    dlq_recorded: bool
    at: str

    @property
    def subject(self) -> str:
        # SNS subjects are at most 100 printable ASCII characters.
        return f"[checkout] {self.kind}: order {self.order_id}"[:100]


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...


class SnsAlerts:
    def __init__(self, topic_arn: str, client: Any) -> None:
        self._topic = topic_arn
        self._client = client

    def send(self, alert: Alert) -> None:
        self._client.publish(
            TopicArn=self._topic,
            Subject=alert.subject,
            Message=json.dumps(asdict(alert)),
            MessageAttributes={
                "kind": {"DataType": "String", "StringValue": alert.kind.value},
                "severity": {"DataType": "String", "StringValue": alert.severity},
            },
        )
