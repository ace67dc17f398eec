"""Prints the admin API's OpenAPI document, as committed in docs/admin-openapi.json (`make openapi`)."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

from checkout.http_api import openapi_document
from functions.admin.app import app

# API Gateway's IAM authorizer: a SigV4-signed Authorization header (x-amazon-apigateway-authtype: awsSigv4).
SIGV4 = APIKey(
    name="Authorization",
    **{"in": APIKeyIn.header},
    description="AWS Signature Version 4 (IAM auth); e.g. awscurl --service execute-api",
)


def document() -> str:
    return openapi_document(
        app,
        title="Checkout saga admin API",
        version="1.0.0",
        summary="Failed compensations and orders, for operators; every route needs an IAM-signed (SigV4) request",
        security_schemes={"sigv4": SIGV4},
        security=[{"sigv4": []}],
        description=(
            'Every error is JSON `{"error", "message"}` with the status and code each answer below names.'
            " Bodies are JSON objects sent as `application/json` (UTF-8, at most 64 KiB). A refused request"
            " changes nothing. An unknown path is a 404 `not_found`, a known path with another method a 405."
        ),
    )


if __name__ == "__main__":
    print(document())
