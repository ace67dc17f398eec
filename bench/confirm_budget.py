"""One happy-path confirm's request budget (DynamoDB requests, payment calls) and the handler's cold start."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DYNAMODB_BUDGET = 4
PAYMENT_CALLS = 2
COLD_START_RATIO_BUDGET = 1.3

LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "checkout",
    "POWERTOOLS_METRICS_NAMESPACE": "CheckoutBench",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


def request_budget() -> dict[str, Any]:
    os.environ.update(LOCAL_ENV)
    from moto import mock_aws

    from checkout.config import Settings
    from checkout.runtime import Runtime, use_runtime
    from functions.confirm_checkout.app import lambda_handler
    from local.fake_payment import FakeStripe
    from local.fake_warehouse import FakeWarehouse
    from local.template_stack import TemplateStack
    from tests.apigw import http_event
    from tests.conftest import LambdaContext

    with mock_aws(), FakeStripe() as stripe, FakeWarehouse() as warehouse:
        stack = TemplateStack().deploy()
        env = stack.environment("ConfirmCheckoutFunction")
        env.update(PAYMENT_API_BASE_URL=stripe.url, PAYMENT_API_KEY="sk_test", WAREHOUSE_API_BASE_URL=warehouse.url)
        runtime = Runtime(Settings.from_environ(env))
        use_runtime(runtime)
        calls: Counter[str] = Counter()
        runtime.dynamodb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))
        body = {
            "customer_id": "cus_bench",
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "items": [{"sku": "sku_1", "quantity": 1, "unit_amount": 1000}],
        }
        created = lambda_handler(http_event("POST", "/checkout/sessions", body=body, iam=True), LambdaContext())
        session_id = json.loads(created["body"])["session_id"]
        calls.clear()
        before = len(stripe.requests)
        headers = {"X-Session-ID": session_id, "X-Customer-ID": "cus_bench"}
        answer = lambda_handler(http_event("POST", "/checkout/confirm", headers=headers), LambdaContext())
        payment_calls = [f"{r['method']} {r['path']}" for r in stripe.requests[before:]]
        use_runtime(None)
    dynamodb_requests = sum(calls.values())
    return {
        "confirm_status": answer["statusCode"],
        "dynamodb_requests": dynamodb_requests,
        "dynamodb_by_operation": dict(calls),
        "payment_calls": len(payment_calls),
        "payment_calls_made": payment_calls,
        "dynamodb_budget_met": dynamodb_requests <= DYNAMODB_BUDGET,
        "payment_budget_met": len(payment_calls) == PAYMENT_CALLS,
    }


# Each snippet runs in a fresh, isolated interpreter whose only packages are the layer's (what Lambda has):
# the dev venv's extras (click, rich, moto, ...) change what some imports pull in, httpx's among them.
_CONFIRM_INIT = """
import time; t = time.perf_counter()
import app
from checkout.runtime import runtime
runtime().confirmer; runtime().sessions
print(time.perf_counter() - t)
"""
_BARE_INIT = """
import time; t = time.perf_counter()
import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
logger, tracer, metrics = Logger(), Tracer(), Metrics()
app = APIGatewayHttpResolver()
boto3.client("dynamodb")
print(time.perf_counter() - t)
"""
LAYER_SITE = ROOT / ".tools" / "bench-layer"


def _layer_site() -> Path:
    """The layer's requirements installed for this machine, as `sam build` installs them for Lambda."""
    requirements = ROOT / "layers" / "shared" / "requirements.txt"
    stamp = LAYER_SITE / ".requirements"
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        uv = ROOT / ".tools" / "bin" / "uv"
        subprocess.run(
            [
                str(uv),
                "pip",
                "install",
                "--quiet",
                "--target",
                str(LAYER_SITE),
                "-r",
                str(requirements),
                "--python",
                sys.executable,
            ],
            check=True,
        )
        stamp.write_text(requirements.read_text())
    return LAYER_SITE


def cold_start(runs: int = 9) -> dict[str, Any]:
    site = _layer_site()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        **LOCAL_ENV,
        "ORDERS_TABLE_NAME": "orders",
        "FAILED_COMPENSATIONS_TABLE_NAME": "failed",
        "FAILED_COMPENSATIONS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        "ALERTS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:alerts",
        "WAREHOUSE_API_BASE_URL": "https://warehouse.example",
        "PAYMENT_API_KEY": "sk_test",
    }
    # Lambda's path: the function's CodeUri, then the layer (its package and its dependencies).
    paths = [str(ROOT / "functions" / "confirm_checkout"), str(ROOT / "layers" / "shared"), str(site)]

    def measure(code: str) -> float:
        prelude = f"import sys; sys.path[:0] = {paths!r}\n"
        out = subprocess.run(
            [sys.executable, "-I", "-c", prelude + code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT / "functions" / "confirm_checkout",
        )
        return float(out.stdout.strip().splitlines()[-1])

    measure(_CONFIRM_INIT)  # warm the file cache once, for both
    confirm, bare = [], []
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        confirm.append(measure(_CONFIRM_INIT))
        bare.append(measure(_BARE_INIT))
    ratio = statistics.median(confirm) / statistics.median(bare)
    return {
        "confirm_init_ms": round(statistics.median(confirm) * 1000, 1),
        "bare_powertools_boto3_init_ms": round(statistics.median(bare) * 1000, 1),
        "ratio": round(ratio, 2),
        "ratio_budget": COLD_START_RATIO_BUDGET,
        "cold_start_budget_met": ratio <= COLD_START_RATIO_BUDGET,
    }
