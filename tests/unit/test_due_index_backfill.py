"""While a stack update backfills the new due-index, the workers still find what is due (through the old index)."""

from __future__ import annotations

import boto3
from botocore.stub import Stubber

from checkout.orders import DUE_INDEX, PREVIOUS_DUE_INDEX, OrderStore
from checkout.saga import WorkQueue


def _entry(order_id: str, due_at: int) -> dict[str, dict[str, str]]:
    return {
        "pk": {"S": f"ORDER#{order_id}"},
        "work_queue": {"S": "capture#00"},
        "due_at": {"N": str(due_at)},
        "saga_state": {"S": "CAPTURE_PENDING"},
        "version": {"N": "3"},
    }


def test_due_orders_are_read_from_the_previous_index_while_the_new_one_backfills() -> None:
    # Given a DynamoDB that refuses Queries on the new index, as it does while the index backfills
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    asked: list[str] = []
    client.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: asked.append(params["IndexName"])
    )
    with Stubber(client) as stub:
        stub.add_client_error(
            "query",
            service_error_code="ValidationException",
            service_message=f"Cannot read from backfilling global secondary index: {DUE_INDEX}",
            http_status_code=400,
        )
        stub.add_response("query", {"Items": [_entry("ord_a", 100)], "Count": 1, "ScannedCount": 1})
        stub.add_response("query", {"Items": [_entry("ord_b", 90)], "Count": 1, "ScannedCount": 1})

        # When a worker reads the due captures
        due = list(OrderStore("orders", client, due_index_shards=1).due(WorkQueue.CAPTURE, 1000))

    # Then it finds them all, oldest first, the refused page read from the previous index
    assert [d.order_id for d in due] == ["ord_b", "ord_a"]
    assert asked.count(PREVIOUS_DUE_INDEX) == 1
    assert asked.count(DUE_INDEX) == 2
