"""Orders and checkout sessions, and their store on the DynamoDB Orders table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from checkout.dynamodb import from_item, is_condition_failure, serialize, to_item
from checkout.saga import (
    MUTABLE_FIELDS,
    STATUS,
    ConcurrentUpdate,
    OrderStatus,
    SagaState,
    WorkItem,
    WorkQueue,
)


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    quantity: int
    unit_amount: int


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    at: str
    from_state: SagaState | None = Field(
        default=None, validation_alias=AliasChoices("from", "from_state"), serialization_alias="from"
    )
    to: SagaState
    reason: str


class CheckoutSession(BaseModel):
    model_config = ConfigDict(frozen=True)

    session_id: str
    customer_id: str
    currency: str
    items: list[LineItem]
    amount_total: int
    payment_method: str | None = None
    reservation_id: str
    created_at: str
    expires_at: str
    expires_at_epoch: int
    order_id: str | None = None


class Order(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    session_id: str
    customer_id: str
    currency: str
    amount_total: int
    items: list[LineItem]
    payment_method: str
    reservation_id: str | None = None
    saga_state: SagaState
    status: OrderStatus
    version: int
    history: list[HistoryEntry]
    created_at: str
    created_at_epoch: int
    updated_at: str
    authorization_id: str | None = None
    capture_attempts: int = 0
    next_attempt_at: int | None = None
    key_attempts: dict[str, int] = Field(default_factory=dict)
    lease_owner: str | None = None
    lease_until: int | None = None
    idempotency_key: str | None = None
    last_error: str | None = None
    refund_id: str | None = None
    compensation_id: str | None = None
    # Recovery runs that could not settle the order (RECOVERY_MAX_ATTEMPTS): a counter, not history entries.
    recovery_attempts: int = 0

    def key_attempt(self, step: str) -> int:
        return self.key_attempts.get(step, 1)

    def public_view(self) -> dict[str, Any]:
        """The order as GET /orders/{id} shows it."""
        return {
            "order_id": self.order_id,
            "session_id": self.session_id,
            "customer_id": self.customer_id,
            "status": self.status,
            "saga_state": self.saga_state,
            "amount_total": self.amount_total,
            "currency": self.currency,
            "history": [h.model_dump(mode="json", by_alias=True) for h in self.history],
        }


def _order_pk(order_id: str) -> str:
    return f"ORDER#{order_id}"


def _session_pk(session_id: str) -> str:
    return f"SESSION#{session_id}"


class OrderStore:
    """The Orders table: one item per order (`ORDER#id`) and per checkout session (`SESSION#id`).

    Uses the low-level client so a create can be one transaction; `client` is injectable for tests.
    """

    def __init__(self, table_name: str, client: Any) -> None:
        self._table = table_name
        self._client = client

    # sessions -------------------------------------------------------------------------------
    def put_session(self, session: CheckoutSession) -> None:
        item = {"pk": {"S": _session_pk(session.session_id)}, "kind": {"S": "session"}, **to_item(session)}
        self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")

    def get_session(self, session_id: str) -> CheckoutSession | None:
        found = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": _session_pk(session_id)}}, ConsistentRead=True
        ).get("Item")
        return CheckoutSession.model_validate(from_item(found)) if found else None

    # orders ---------------------------------------------------------------------------------
    def create_order(self, order: Order, work: WorkItem | None, previous_order_id: str | None) -> None:
        """Write a new order and point its session at it, in one transaction.

        The session condition makes a session hold at most one live order: a concurrent confirm that
        read the same session state loses here.
        """
        item = {"pk": {"S": _order_pk(order.order_id)}, "kind": {"S": "order"}, **to_item(order)}
        if work is not None:
            item["work_queue"] = {"S": work.queue.value}
            item["due_at"] = {"N": str(work.due_at)}
        if previous_order_id is None:
            session_condition = "attribute_not_exists(order_id)"
            values: dict[str, Any] = {":new": {"S": order.order_id}, ":customer": {"S": order.customer_id}}
        else:
            session_condition = "order_id = :previous"
            values = {
                ":new": {"S": order.order_id},
                ":customer": {"S": order.customer_id},
                ":previous": {"S": previous_order_id},
            }
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": _session_pk(order.session_id)}},
                            "UpdateExpression": "SET order_id = :new",
                            "ConditionExpression": f"customer_id = :customer AND ({session_condition})",
                            "ExpressionAttributeValues": values,
                        }
                    },
                ]
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConcurrentUpdate(f"session {order.session_id} changed while creating an order") from exc
            raise

    def get_order(self, order_id: str) -> Order | None:
        found = self._client.get_item(
            TableName=self._table, Key={"pk": {"S": _order_pk(order_id)}}, ConsistentRead=True
        ).get("Item")
        return Order.model_validate(from_item(found)) if found else None

    def write_transition(self, before: Order, after: Order, work: WorkItem | None) -> None:
        new_entries = after.history[len(before.history) :]
        names = {"#state": "saga_state", "#status": "status", "#version": "version", "#history": "history"}
        values: dict[str, Any] = {
            ":state": {"S": after.saga_state.value},
            ":status": {"S": STATUS[after.saga_state].value},
            ":version": {"N": str(after.version)},
            ":expected_state": {"S": before.saga_state.value},
            ":expected_version": {"N": str(before.version)},
            ":entries": serialize([e.model_dump(mode="json", by_alias=True) for e in new_entries]),
            ":updated_at": {"S": after.updated_at},
        }
        sets = [
            "#state = :state",
            "#status = :status",
            "#version = :version",
            "updated_at = :updated_at",
            "#history = list_append(#history, :entries)",
        ]
        removes = ["lease_owner", "lease_until"]
        before_data = before.model_dump(mode="json")
        after_data = after.model_dump(mode="json")
        for field in sorted(MUTABLE_FIELDS):
            if after_data[field] == before_data[field]:
                continue
            if after_data[field] is None:
                removes.append(field)
            else:
                sets.append(f"{field} = :{field}")
                values[f":{field}"] = serialize(after_data[field])
        if work is None:
            removes += ["work_queue", "due_at"]
        else:
            sets += ["work_queue = :queue", "due_at = :due"]
            values[":queue"] = {"S": work.queue.value}
            values[":due"] = {"N": str(work.due_at)}
        self._conditional_update(
            after.order_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            "#state = :expected_state AND #version = :expected_version",
            names,
            values,
        )

    def write_claim(self, before: Order, after: Order, now: int) -> None:
        assert after.lease_until is not None
        assert after.lease_owner is not None
        self._conditional_update(
            after.order_id,
            # Pushing due_at to the lease's end keeps the order out of other workers' due queries.
            "SET #version = :version, lease_owner = :owner, lease_until = :until, due_at = :until",
            "#state = :expected_state AND #version = :expected_version "
            "AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            {"#state": "saga_state", "#version": "version"},
            {
                ":version": {"N": str(after.version)},
                ":owner": {"S": after.lease_owner},
                ":until": {"N": str(after.lease_until)},
                ":now": {"N": str(now)},
                ":expected_state": {"S": before.saga_state.value},
                ":expected_version": {"N": str(before.version)},
            },
        )

    def write_release(self, before: Order, after: Order, work: WorkItem | None) -> None:
        names = {"#state": "saga_state", "#version": "version"}
        values: dict[str, Any] = {
            ":version": {"N": str(after.version)},
            ":expected_state": {"S": before.saga_state.value},
            ":expected_version": {"N": str(before.version)},
        }
        update = "SET #version = :version"
        if work is not None:
            update += ", work_queue = :queue, due_at = :due"
            values[":queue"] = {"S": work.queue.value}
            values[":due"] = {"N": str(work.due_at)}
        self._conditional_update(
            after.order_id,
            f"{update} REMOVE lease_owner, lease_until",
            "#state = :expected_state AND #version = :expected_version",
            names,
            values,
        )

    def _conditional_update(
        self, order_id: str, update: str, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": _order_pk(order_id)}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConcurrentUpdate(f"order {order_id} was moved or claimed by another actor") from exc
            raise

    def oldest_due_at(self, queue: WorkQueue) -> int | None:
        """The earliest due_at in `queue`: one item of one Query on the due-index (its first key), or None."""
        page = self._client.query(
            TableName=self._table,
            IndexName="due-index",
            KeyConditionExpression="work_queue = :queue",
            ExpressionAttributeValues={":queue": {"S": queue.value}},
            ProjectionExpression="due_at",
            ScanIndexForward=True,
            Limit=1,
        )
        items = page.get("Items", [])
        return int(items[0]["due_at"]["N"]) if items else None

    def due(self, queue: WorkQueue, now: int, *, page_size: int = 100) -> Iterator[Order]:
        """Orders in `queue` whose due_at has passed, oldest first, by a Query on the sparse due-index."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "due-index",
            "KeyConditionExpression": "work_queue = :queue AND due_at <= :now",
            "ExpressionAttributeValues": {":queue": {"S": queue.value}, ":now": {"N": str(now)}},
            "Limit": page_size,
        }
        while True:
            page = self._client.query(**kwargs)
            for item in page.get("Items", []):
                yield Order.model_validate(from_item(item))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
