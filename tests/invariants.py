"""The money invariants of ARCHITECTURE.md section 4, checked against the tables and the providers' ledgers."""

from __future__ import annotations

from collections import Counter
from typing import Any

import boto3

from checkout.dynamodb import from_item
from local.fake_payment import FakeStripe
from local.fake_warehouse import FakeWarehouse
from local.template_stack import TemplateStack


def scan(stack: TemplateStack, table: str, client: Any = None) -> list[dict[str, Any]]:
    client = client or boto3.client("dynamodb")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": stack.physical[table]["Ref"], "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items += [from_item(i) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def orders(stack: TemplateStack) -> list[dict[str, Any]]:
    return [i for i in scan(stack, "OrdersTable") if i.get("kind") == "order"]


def records(stack: TemplateStack) -> list[dict[str, Any]]:
    return scan(stack, "FailedCompensationsTable")


def assert_money_invariants(
    stack: TemplateStack,
    stripe: FakeStripe,
    warehouse: FakeWarehouse,
    *,
    converged: bool,
    alerts: list[dict[str, Any]] | None = None,
    order_items: list[dict[str, Any]] | None = None,
    record_items: list[dict[str, Any]] | None = None,
    settling: bool = False,
) -> None:
    """`order_items` / `record_items`: the tables already read (a caller checking after every step reads once)."""
    order_items = orders(stack) if order_items is None else order_items
    record_items = records(stack) if record_items is None else record_items
    by_id = {o["order_id"]: o for o in order_items}
    open_records = {r["order_id"] for r in record_items if r["status"] != "resolved"}
    captures = Counter(e["order_id"] for e in stripe.ledger if e["op"] == "captured")
    refunded = {e.get("order_id") for e in stripe.ledger if e["op"] == "refunded"}

    # 1. At most one successful capture per order, for exactly the order total.
    for order_id, count in captures.items():
        assert count == 1, f"{order_id} captured {count} times"
    for event in stripe.ledger:
        if event["op"] == "captured":
            assert event["amount"] == by_id[event["order_id"]]["amount_total"], event
    # 3. Every capture belongs to a CAPTURED order (or was refunded, recorded as such). `settling`: checked after
    # every step of a run still in progress, where a capture whose answer was lost belongs to an order the
    # saga has not settled yet (CAPTURE_PENDING, or compensating and about to refund it).
    for order_id in captures:
        order = by_id[order_id]
        if settling and order["saga_state"] not in ("DECLINED", "AUTH_FAILED", "COMPENSATED"):
            continue
        assert order["saga_state"] == "CAPTURED" or order_id in refunded or order_id in open_records, order
    for order in by_id.values():
        if order["saga_state"] == "CAPTURED":
            assert captures[order["order_id"]] == 1, f"{order['order_id']} confirmed without a capture"
    if converged:
        # 2. Every authorization is captured, voided, or named by an open record whose alert was sent.
        for intent in stripe.intents.values():
            order_id = intent["metadata"].get("order_id")
            if intent["status"] == "requires_capture":
                assert order_id in open_records, f"orphaned hold {intent['id']} for {order_id}"
            # A 3-D Secure intent left waiting for a cancelled order could still become a hold.
            if intent["status"] == "requires_action" and by_id.get(order_id, {}).get("status") == "cancelled":
                raise AssertionError(f"intent {intent['id']} of cancelled {order_id} still awaits 3-D Secure")
        # 4. Every cancelled order's reservation is released, or named by an open record.
        for order in by_id.values():
            if order["status"] == "cancelled" and order.get("reservation_id"):
                reservation = warehouse.reservations[order["reservation_id"]]
                assert reservation["status"] == "released" or order["order_id"] in open_records, order
    # 5. Every open record has exactly one compensation_failed alert.
    if alerts is not None:
        failed_alerts = Counter(a["compensation_id"] for a in alerts if a["kind"] == "compensation_failed")
        for record in record_items:
            assert failed_alerts[record["id"]] == 1, f"{record['id']}: {failed_alerts[record['id']]} alerts"
