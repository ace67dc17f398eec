"""Prints the admin API's OpenAPI document, as committed in docs/admin-openapi.json (`make admin-openapi`)."""

from __future__ import annotations

from functions.admin.app import app


def document() -> str:
    return app.get_openapi_json_schema(
        title="Checkout saga admin API",
        version="1.0.0",
        summary="Failed compensations and orders, for operators; every route needs an IAM-signed (SigV4) request",
    )


if __name__ == "__main__":
    print(document())
