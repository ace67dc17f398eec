"""Drain rate of one capture_retry run over a backlog, with the provider answering each capture in 200 ms."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.confirm_budget import LOCAL_ENV

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_DELAY_SECONDS = 0.2
BACKLOG = 400
SERIAL_BACKLOG = 15
RATE_BUDGET = 50.0
SPEEDUP_BUDGET = 10.0
ITEMS_READ_BUDGET = 1.05


def _drain(count: int, concurrency: int) -> dict[str, Any]:
    from moto import mock_aws

    from checkout.config import Settings
    from checkout.runtime import Runtime, use_runtime
    from functions.capture_retry.app import lambda_handler
    from local.fake_payment import FakeStripe
    from local.template_stack import TemplateStack
    from tests.backlog import CountingDynamoDB, due_captures, put_all
    from tests.conftest import LambdaContext, SerializedClient

    event = json.loads((ROOT / "events" / "capture_retry_schedule.json").read_text())
    with mock_aws(), FakeStripe() as stripe:
        stack = TemplateStack().deploy()
        env = stack.environment("CaptureRetryFunction")
        env.update(
            PAYMENT_API_BASE_URL=stripe.url,
            PAYMENT_API_KEY="sk_test_local",
            WAREHOUSE_API_BASE_URL="http://127.0.0.1:9",
            WORKER_CONCURRENCY=str(concurrency),
            WORKER_PAUSE_PARAMETER="",
        )
        import boto3

        # moto's in-process DynamoDB is not thread-safe; the real one is. Serializing the emulator makes
        # this a lower bound on the drain rate in AWS.
        counting = CountingDynamoDB(boto3.client("dynamodb"))
        use_runtime(Runtime(Settings.from_environ(env), dynamodb=SerializedClient(counting)))
        put_all(stack.physical["OrdersTable"]["Ref"], due_captures(stripe.url, count, now=time.time()))
        stripe.inject("capture", delay=PROVIDER_DELAY_SECONDS)
        started = time.perf_counter()
        summary = lambda_handler(event, LambdaContext(timeout_seconds=180))
        elapsed = time.perf_counter() - started
        use_runtime(None)
    return {
        "captured": summary["captured"],
        "seconds": elapsed,
        "rate": summary["captured"] / elapsed,
        "items_read": counting.items_read,
        "due": summary["due"],
        "dynamodb_seconds": counting.seconds,
    }


def run() -> dict[str, Any]:
    os.environ.update(LOCAL_ENV)
    concurrent = _drain(BACKLOG, concurrency=16)
    serial = _drain(SERIAL_BACKLOG, concurrency=1)
    speedup = concurrent["rate"] / serial["rate"]
    items_per_due = concurrent["items_read"] / max(1, concurrent["due"])
    return {
        "provider_delay_ms": int(PROVIDER_DELAY_SECONDS * 1000),
        "backlog": BACKLOG,
        "captured": concurrent["captured"],
        "captures_per_second": round(concurrent["rate"], 1),
        "serial_captures_per_second": round(serial["rate"], 1),
        "speedup_over_serial": round(speedup, 1),
        # moto's in-process DynamoDB is CPU-bound and serialized here: how much of the run it was busy.
        "run_seconds": round(concurrent["seconds"], 2),
        "dynamodb_emulator_busy_seconds": round(concurrent["dynamodb_seconds"], 2),
        "items_read_per_due_item": round(items_per_due, 3),
        "rate_budget": RATE_BUDGET,
        "rate_budget_met": concurrent["rate"] >= RATE_BUDGET,
        "speedup_budget_met": speedup >= SPEEDUP_BUDGET,
        "items_read_budget_met": items_per_due <= ITEMS_READ_BUDGET,
    }
