"""Builds real API Gateway HTTP API (payload 2.0) events from the committed sample in events/."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

SAMPLE = json.loads((Path(__file__).resolve().parent.parent / "events" / "confirm_checkout_confirm.json").read_text())


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    route_key: str | None = None,
    path_parameters: dict[str, str] | None = None,
    iam: bool = False,
) -> dict[str, Any]:
    event = copy.deepcopy(SAMPLE)
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    event_headers = {k: v for k, v in event["headers"].items() if not k.startswith("x-") or k.startswith("x-forw")}
    event_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    if text is None:
        event_headers.pop("content-length", None)
        event_headers.pop("content-type", None)
    else:
        event_headers["content-length"] = str(len(text.encode()))
    event["headers"] = event_headers
    event["body"] = text
    if text is None:
        del event["body"]
    event["rawPath"] = path
    event["rawQueryString"] = urlencode(query or {})
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    key = route_key or f"{method} {path}"
    event["routeKey"] = key
    ctx = event["requestContext"]
    ctx["routeKey"] = key
    ctx["http"]["method"] = method
    ctx["http"]["path"] = path
    ctx["requestId"] = uuid.uuid4().hex
    if iam:
        ctx["authorizer"] = {
            "iam": {
                "accessKey": "AKIAEXAMPLE",
                "accountId": "123456789012",
                "callerId": "AIDAEXAMPLE",
                "principalOrgId": None,
                "userArn": "arn:aws:iam::123456789012:user/operator",
                "userId": "AIDAEXAMPLE",
            }
        }
    return event
