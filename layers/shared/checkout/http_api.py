"""What both HTTP APIs answer alike: JSON bodies, `{"error", "message"}` errors with their status, the body limit."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from checkout.errors import CheckoutError, PayloadTooLarge
from checkout.observability import logger

MAX_BODY_BYTES = 64 * 1024
# Where pydantic says a problem is; a client knows its own body, query and path without the prefix.
_LOCATION_PREFIXES = ("body", "query", "path")


def json_response(status: int, body: dict[str, Any]) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


def answer_errors_as_json(app: APIGatewayHttpResolver) -> None:
    """Domain errors, validation errors and anything unexpected all answer `{"error", "message"}`."""

    @app.exception_handler(CheckoutError)
    def _checkout_error(exc: CheckoutError) -> Response[str]:
        logger.info("request refused", extra={"error": exc.code, "detail": exc.message})
        return json_response(exc.status, exc.body())

    @app.exception_handler(RequestValidationError)
    def _validation_error(exc: RequestValidationError) -> Response[str]:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in _LOCATION_PREFIXES) or "body"
            problems.append(f"{where}: {err.get('msg') or err.get('type')}")
        return json_response(422, {"error": "validation_error", "message": "; ".join(problems) or "invalid request"})

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response[str]:
        logger.exception("unhandled error")
        return json_response(
            500, {"error": "internal_error", "message": "something went wrong; the request can be retried"}
        )


def refuse_oversized(event: dict[str, Any]) -> dict[str, Any] | None:
    """The 413 answer for a body over MAX_BODY_BYTES, checked before anything parses it; None when it fits."""
    body = event.get("body") or ""
    size = len(base64.b64decode(body)) if event.get("isBase64Encoded") else len(body.encode())
    if size <= MAX_BODY_BYTES:
        return None
    error = PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(error.body()),
    }
