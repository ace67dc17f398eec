"""A LocalFunction with a test's own handler, named and sized as the local stack builds one from the template."""

from __future__ import annotations

from typing import Any

from local.lambdas import LocalFunction


def local_function(name: str, **overrides: Any) -> LocalFunction:
    """`name` ("Slow") gives the logical id (SlowFunction), folder, module and function name; `overrides` the rest."""
    fields: dict[str, Any] = {
        "logical_id": f"{name}Function",
        "folder": name.lower(),
        "module": f"{name.lower()}.app",
        "attribute": "lambda_handler",
        "function_name": f"checkout-local-{name.lower()}",
        "timeout_seconds": 30,
        "memory_mb": 128,
        "events": {},
        "region": "us-east-1",
        "account": "123456789012",
    }
    return LocalFunction(**{**fields, **overrides})
