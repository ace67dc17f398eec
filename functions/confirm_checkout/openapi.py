"""Prints the checkout API's OpenAPI document, as committed in docs/openapi.json (`make openapi`)."""

from __future__ import annotations

from checkout.http_api import openapi_document
from functions.confirm_checkout.app import app


def document() -> str:
    return openapi_document(
        app,
        title="Checkout saga API",
        version="1.0.0",
        summary="Checkout sessions, confirm (authorize, record, capture) and orders",
        description=(
            'Every error is JSON `{"error", "message"}` (some add fields, e.g. `order_id`) with the status and'
            " code each answer below names. Bodies are JSON objects sent as `application/json` (UTF-8, at most"
            " 64 KiB); amounts are integers in minor units. A refused request writes nothing and calls no provider."
            " An unknown path is a 404 `not_found`, a known path with another method a 405 `method_not_allowed`."
        ),
    )


if __name__ == "__main__":
    print(document())
