"""A backlog of orders seeded in bulk (into DynamoDB Local, or straight into in-process moto), and a DynamoDB client
that counts what it reads (tests, bench)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

from checkout.config import Settings
from checkout.dynamodb import to_item
from checkout.orders import HistoryEntry, LineItem, Order, due_partition
from checkout.payments import StripePaymentGateway
from checkout.saga import STATUS, SagaState, WorkQueue, iso

# The template's (and the settings') shard count: what the functions write.
DEFAULT_SHARDS = int(Settings.model_fields["due_index_shards"].default)

S = SagaState


class CountingDynamoDB:
    """moto's DynamoDB, counting each operation, the items every Query and Scan read (ScannedCount) and the time."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()
        self.items_read = 0
        # Time spent in calls, waiting included: how much of a run the emulator itself took.
        self.seconds = 0.0
        # The due-index is read from several threads at once.
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                answer = real(**kwargs)
            finally:
                with self._lock:
                    self.calls[name] += 1
                    self.seconds += time.perf_counter() - started
            if name in ("query", "scan"):
                with self._lock:
                    self.items_read += int(answer.get("ScannedCount", 0))
            return answer

        return call


def an_order(state: SagaState, *, authorization_id: str | None = None, now: float) -> Order:
    at = iso(now - 600)
    return Order(
        order_id=f"ord_{uuid.uuid4().hex}",
        session_id=f"cs_{uuid.uuid4().hex}",
        customer_id="cus_scale",
        currency="usd",
        amount_total=1000,
        items=[LineItem(sku="sku_mug", quantity=1, unit_amount=1000)],
        payment_method="pm_card_visa",
        saga_state=state,
        status=STATUS[state],
        version=3,
        history=[HistoryEntry(at=at, from_state=None, to=S.AUTHORIZING, reason="seeded")],
        created_at=at,
        created_at_epoch=int(now - 600),
        updated_at=at,
        authorization_id=authorization_id,
    )


def _on_dynamodb_local() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"))


def put_all(
    table: str, rows: list[tuple[Order, str | None, int | None]], *, shards: int | None = DEFAULT_SHARDS
) -> None:
    """Seed the table with the items PutItem would store: by BatchWriteItem on DynamoDB Local (four writers at
    once), or through in-process moto's backend (21,000 calls through moto would take minutes).

    Each row's queue goes to its order's shard, as the functions write it; `shards=None` writes the queue
    unsharded, as releases before due-index sharding did.
    """
    items = []
    for order, queue, due_at in rows:
        item = {"pk": {"S": f"ORDER#{order.order_id}"}, "kind": {"S": "order"}, **to_item(order)}
        if queue is not None:
            partition = queue if shards is None else due_partition(WorkQueue(queue), order.order_id, shards)
            item["work_queue"] = {"S": partition}
            item["due_at"] = {"N": str(due_at)}
        items.append(item)
    if _on_dynamodb_local():
        client = boto3.client("dynamodb")

        def write(batch: list[dict[str, Any]]) -> None:
            requests = [{"PutRequest": {"Item": item}} for item in batch]
            while requests:
                requests = client.batch_write_item(RequestItems={table: requests})["UnprocessedItems"].get(table, [])

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, [items[i : i + 25] for i in range(0, len(items), 25)]))
        return
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    for item in items:
        backend.put_item(table, item)


def stored_states(table: str) -> Counter[str]:
    """Every order's saga_state (a Scan on DynamoDB Local; moto's backend read directly, as its Scan is slow)."""
    if _on_dynamodb_local():
        states: Counter[str] = Counter()
        pages = (
            boto3.client("dynamodb")
            .get_paginator("scan")
            .paginate(TableName=table, ProjectionExpression="saga_state, kind")
        )
        for page in pages:
            states.update(i["saga_state"]["S"] for i in page["Items"] if i.get("kind", {}).get("S") == "order")
        return states
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    items = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table(table).all_items()
    return Counter(item.attrs["saga_state"].value for item in items if item.attrs["kind"].value == "order")


def due_captures(stripe_url: str, count: int, *, now: float) -> list[tuple[Order, str | None, int | None]]:
    """`count` CAPTURE_PENDING orders due now, each holding a real authorization at the (fake) provider."""
    gateway = StripePaymentGateway(stripe_url, lambda: "sk_test_local")
    rows: list[tuple[Order, str | None, int | None]] = []
    for _ in range(count):
        order = an_order(S.CAPTURE_PENDING, now=now)
        intent = gateway.authorize(
            order_id=order.order_id,
            amount=order.amount_total,
            currency="usd",
            payment_method="pm_card_visa",
            idempotency_key=f"{order.order_id}:authorize",
            timeout=5,
        )
        rows.append((order.model_copy(update={"authorization_id": intent.id}), "capture", int(now) - 5))
    return rows
