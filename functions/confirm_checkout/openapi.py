"""Prints the checkout API's OpenAPI document, as committed in docs/openapi.json (`make openapi`)."""

from __future__ import annotations

from functions.confirm_checkout.app import app


def document() -> str:
    return app.get_openapi_json_schema(
        title="Checkout saga API",
        version="1.0.0",
        summary="Checkout sessions, confirm (authorize, record, capture) and orders",
    )


if __name__ == "__main__":
    print(document())
