"""DynamoDB requests and capacity units per checkout, measured on AWS's DynamoDB Local (ReturnConsumedCapacity=INDEXES),
and the confirm-rate ceiling they imply for the due-index before and after write-sharding (docs/capacity.md).

moto keeps SQS, SNS and Secrets Manager; DynamoDB Local answers every DynamoDB call, as in `make run`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.confirm_budget import LOCAL_ENV

ROOT = Path(__file__).resolve().parent.parent
CHECKOUTS = 20
# Enough due captures that each shard's page holds several, so the two projections' read costs differ.
PENDING = 160
# A DynamoDB partition takes at most 1,000 write units a second (Developer Guide, "Partitions and data
# distribution"); a GSI partition the same. Every write of an order in flight lands in one work-queue partition.
PARTITION_WRITE_UNITS_PER_SECOND = 1000
# Operations that accept ReturnConsumedCapacity.
METERED = {"PutItem", "UpdateItem", "GetItem", "Query", "TransactWriteItems", "DeleteItem", "Scan"}
READS = {"GetItem", "Query", "Scan"}
OLD_INDEX = "due-index"


class CapacityMeter:
    """Counts each DynamoDB operation of a client and the capacity units DynamoDB says it consumed, per phase."""

    def __init__(self, client: Any) -> None:
        self.phase = "setup"
        self.requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.units: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        client.meta.events.register("provide-client-params.dynamodb", self._ask)
        client.meta.events.register("after-call.dynamodb", self._count)

    def _ask(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in METERED:
            params.setdefault("ReturnConsumedCapacity", "INDEXES")

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.requests[self.phase][model.name] += 1
        kind = "read" if model.name in READS else "write"
        consumed = parsed.get("ConsumedCapacity") or []
        for entry in consumed if isinstance(consumed, list) else [consumed]:
            self.units[self.phase][f"{kind}:table"] += float(entry.get("Table", {}).get("CapacityUnits", 0.0))
            for name, index in (entry.get("GlobalSecondaryIndexes") or {}).items():
                self.units[self.phase][f"{kind}:{name}"] += float(index.get("CapacityUnits", 0.0))

    def per(self, phase: str, count: int) -> dict[str, Any]:
        return {
            "requests": {op: round(n / count, 2) for op, n in sorted(self.requests[phase].items())},
            "capacity_units": {k: round(v / count, 2) for k, v in sorted(self.units[phase].items())},
        }


def run() -> dict[str, Any]:
    os.environ.update(LOCAL_ENV)
    # The handlers print their EMF metrics on stdout, as Lambda wants; the bench prints only its report.
    with contextlib.redirect_stdout(io.StringIO()):
        return _measure()


def _measure() -> dict[str, Any]:
    import boto3
    from moto import mock_aws

    from checkout.config import Settings
    from checkout.orders import DUE_INDEX, due_partitions
    from checkout.runtime import AWS_CONFIG, Runtime, use_runtime
    from checkout.saga import WorkQueue
    from functions.capture_retry.app import lambda_handler as capture_retry
    from functions.confirm_checkout.app import lambda_handler
    from local.dynamodb_local import DynamoDBLocal
    from local.fake_payment import FakeStripe
    from local.fake_warehouse import FakeWarehouse
    from local.template_stack import TemplateStack
    from tests.apigw import http_event
    from tests.conftest import Clock, LambdaContext

    event = json.loads((ROOT / "events" / "capture_retry_schedule.json").read_text())
    with DynamoDBLocal() as ddb, mock_aws(), FakeStripe() as stripe, FakeWarehouse() as warehouse:
        stack = TemplateStack(dynamodb_endpoint_url=ddb.url).deploy()
        env = stack.environment("ConfirmCheckoutFunction")
        env.update(
            PAYMENT_API_BASE_URL=stripe.url,
            PAYMENT_API_KEY="sk_test",
            WAREHOUSE_API_BASE_URL=warehouse.url,
            WORKER_PAUSE_PARAMETER="",
        )
        settings = Settings.from_environ(env)
        client = boto3.client("dynamodb", endpoint_url=ddb.url, config=AWS_CONFIG)
        meter = CapacityMeter(client)
        clock = Clock()
        use_runtime(Runtime(settings, dynamodb=client, clock=clock))
        table = settings.orders_table_name

        session_seconds: list[float] = []

        def checkout(customer: str, phase: str) -> tuple[int, float]:
            body = {
                "customer_id": customer,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "items": [{"sku": "sku_1", "quantity": 1, "unit_amount": 1000}],
            }
            meter.phase = "session"
            started = time.perf_counter()
            created = lambda_handler(http_event("POST", "/checkout/sessions", body=body, iam=True), LambdaContext())
            session_seconds.append(time.perf_counter() - started)
            session_id = json.loads(created["body"])["session_id"]
            meter.phase = phase
            headers = {"X-Session-ID": session_id, "X-Customer-ID": customer}
            started = time.perf_counter()
            answer = lambda_handler(http_event("POST", "/checkout/confirm", headers=headers), LambdaContext())
            return int(answer["statusCode"]), time.perf_counter() - started

        checkout("cus_warm", "warmup")  # imports, connection pools: what a warm Lambda has
        confirmed = [checkout(f"cus_{n}", "confirm") for n in range(CHECKOUTS)]
        assert {status for status, _ in confirmed} == {201}, confirmed

        # Confirms whose capture failed: each leaves a due capture for one worker run to drain.
        for n in range(PENDING):
            stripe.inject("capture", status=500, times=1)
            status, _ = checkout(f"cus_p{n}", "confirm_pending")
            assert status == 202
        clock.advance(3600)
        now = int(clock())

        # The same due captures, read from the old index (ALL, unsharded values) and from the new one.
        found: list[dict[str, Any]] = []

        def read_all(index: str, partitions: list[str]) -> tuple[int, float]:
            items, units = 0, 0.0
            for partition in partitions:
                page = client.query(
                    TableName=table,
                    IndexName=index,
                    KeyConditionExpression="work_queue = :q AND due_at <= :now",
                    ExpressionAttributeValues={":q": {"S": partition}, ":now": {"N": str(now)}},
                    ReturnConsumedCapacity="INDEXES",
                )
                items += page["Count"]
                found.extend(page["Items"])
                units += float(page["ConsumedCapacity"]["CapacityUnits"])
            return items, units

        meter.phase = "reads"
        partitions = due_partitions(WorkQueue.CAPTURE, settings.due_index_shards)
        new_items, new_units = read_all(DUE_INDEX, partitions)
        old_items, old_units = read_all(OLD_INDEX, partitions)
        order_pk = found[0]["pk"]
        get_units = float(
            client.get_item(TableName=table, Key={"pk": order_pk}, ConsistentRead=True, ReturnConsumedCapacity="TOTAL")[
                "ConsumedCapacity"
            ]["CapacityUnits"]
        )
        item_bytes = len(json.dumps(client.get_item(TableName=table, Key={"pk": order_pk})["Item"]))

        meter.phase = "capture_retry_run"
        summary = capture_retry(event, LambdaContext(timeout_seconds=120, function_name="checkout-local-capture-retry"))
        use_runtime(None)

    confirm = meter.per("confirm", CHECKOUTS)
    session = meter.per("session", CHECKOUTS + PENDING + 1)
    run = meter.per("capture_retry_run", max(1, summary["captured"]))
    gsi_new = confirm["capacity_units"].get(f"write:{DUE_INDEX}", 0.0)
    gsi_old = confirm["capacity_units"].get(f"write:{OLD_INDEX}", 0.0)

    def units(kind: str, *, without: str = "") -> float:
        phases = (confirm, session)
        return sum(v for p in phases for k, v in p["capacity_units"].items() if k.startswith(kind) and k != without)

    shards = settings.due_index_shards
    durations = [seconds for _, seconds in confirmed]
    return {
        "checkouts_measured": CHECKOUTS,
        "session_per_checkout": session,
        "confirm_per_checkout": confirm,
        # Warm handler time on this machine, the fakes answering at once: add the providers' own latency.
        "confirm_handler_ms_p50": round(statistics.median(durations) * 1000, 1),
        "session_handler_ms_p50": round(statistics.median(session_seconds[1:]) * 1000, 1),
        "capture_retry_per_captured_order": run,
        "capture_retry_run": {k: summary[k] for k in ("due", "captured", "skipped", "errors")},
        "due_reads": {
            "due_orders": new_items,
            "sharded_index_query_units": round(new_units, 2),
            "old_index_query_units": round(old_units, 2),
            "old_index_items_found": old_items,
            "get_item_units_per_order": get_units,
            "order_item_bytes": item_bytes,
        },
        "ceiling_confirms_per_second": {
            # Before: every write of an order in flight went to the one `recovery` partition of the ALL index.
            "before_sharding": round(PARTITION_WRITE_UNITS_PER_SECOND / gsi_old) if gsi_old else None,
            # After: spread over DUE_INDEX_SHARDS partitions of the slim index.
            "after_sharding": round(shards * PARTITION_WRITE_UNITS_PER_SECOND / gsi_new) if gsi_new else None,
            "shards": shards,
            "due_index_write_units_per_confirm": {DUE_INDEX: gsi_new, OLD_INDEX: gsi_old},
        },
        "per_checkout_once_the_old_index_is_gone": {
            "write_request_units": round(units("write:", without=f"write:{OLD_INDEX}"), 2),
            "read_request_units": round(units("read:"), 2),
            "dynamodb_requests": sum(session["requests"].values()) + sum(confirm["requests"].values()),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
