"""DynamoDB item conversion shared by the stores (pydantic model <-> attribute-value map)."""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic import BaseModel

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_item(model: BaseModel, **extra: Any) -> dict[str, Any]:
    data = {**model.model_dump(mode="json", by_alias=True, exclude_none=True), **extra}
    return {k: _serializer.serialize(v) for k, v in data.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def serialize(value: Any) -> dict[str, Any]:
    return dict(_serializer.serialize(value))


def is_condition_failure(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in {"ConditionalCheckFailedException", "TransactionCanceledException"}
