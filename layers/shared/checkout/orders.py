"""Orders and checkout sessions, and their store on the DynamoDB Orders table."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from checkout.dynamodb import from_item, is_condition_failure, serialize, to_item
from checkout.saga import (
    MUTABLE_FIELDS,
    STATUS,
    Claimable,
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
    # When authorize was last sent (epoch s); None: only once, when the order was created.
    authorize_sent_at: int | None = None
    # Recovery runs that could not settle the order (RECOVERY_MAX_ATTEMPTS): a counter, not history entries.
    recovery_attempts: int = 0

    def key_attempt(self, step: str) -> int:
        return self.key_attempts.get(step, 1)

    @property
    def last_authorize_sent_at(self) -> int:
        return self.authorize_sent_at if self.authorize_sent_at is not None else self.created_at_epoch

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


@dataclass(frozen=True)
class DueOrder:
    """An order as the due-index shows it: what a worker needs to claim it (the claim returns the whole order)."""

    order_id: str
    saga_state: SagaState
    version: int
    due_at: int


# The sparse index the workers Query (template.yaml): keyed on the work-queue partition and due_at, projecting
# only what a claim's condition needs. A worker's claim (UpdateItem, ReturnValues=ALL_NEW) then returns the
# whole order at no read cost, so no GetItem follows (docs/capacity.md has the measured comparison).
DUE_INDEX = "sharded-due-index"
# The index of earlier releases (ALL projection, unsharded values), read only while the new one backfills: a
# stack update creates an index and may update the functions before DynamoDB has filled it.
PREVIOUS_DUE_INDEX = "due-index"
# Due-index partitions are read this many at once: all shards of a queue in about one round trip.
SHARD_QUERY_CONCURRENCY = 8


def due_partition(queue: WorkQueue, order_id: str, shards: int) -> str:
    """The due-index partition (`recovery#07`) an order's work is written to: a stable hash of its id.

    Every order in flight passes through a work queue and due_at only grows, so one partition per queue would
    cap the whole shop at one partition's write rate; spreading orders over `shards` partitions lifts it.
    """
    shard = int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=4).digest(), "big") % shards
    return f"{queue.value}#{shard:02d}"


def due_partitions(queue: WorkQueue, shards: int) -> list[str]:
    """Every partition a worker reads for `queue`: the unsharded one orders written before sharding still sit
    in (they move to a shard on their next write), then each shard."""
    return [queue.value, *(f"{queue.value}#{shard:02d}" for shard in range(shards))]


def _order_pk(order_id: str) -> str:
    return f"ORDER#{order_id}"


def _session_pk(session_id: str) -> str:
    return f"SESSION#{session_id}"


def _identity(after: Order) -> dict[str, Any]:
    """What one write of `after` sets that no other write from the same read sets: every write bumps the version,
    a claim sets its own lease (write_claim names its own identity), a release keeps updated_at and a transition
    sets a new one."""
    return {
        "version": after.version,
        "saga_state": after.saga_state.value,
        "lease_owner": after.lease_owner,
        "lease_until": after.lease_until,
        "updated_at": after.updated_at,
    }


def _written_by(identity: dict[str, Any], stored: dict[str, Any] | None) -> bool:
    """Whether `stored` (the item a failed condition returned, or a read-back) is the one a write of `identity` set.

    A write whose answer was lost is re-sent (botocore's retry, or ours) and then fails its own condition: the
    item is already what it set.
    """
    if not stored:
        return False
    data = from_item(stored)
    for name, expected in identity.items():
        value = data.get(name)
        if isinstance(expected, int) and value is not None:
            value = int(value)
        if value != expected:
            return False
    return True


def _condition_failure_item(exc: ClientError, index: int = 0) -> dict[str, Any] | None:
    """The item ALL_OLD returned with a failed condition: the error's Item, or a cancelled transaction's reason's."""
    answer: dict[str, Any] = dict(exc.response)
    if answer.get("Error", {}).get("Code") == "TransactionCanceledException":
        reasons = answer.get("CancellationReasons") or []
        item = reasons[index].get("Item") if index < len(reasons) else None
    else:
        item = answer.get("Item")
    return dict(item) if item else None


class OrderStore:
    """The Orders table: one item per order (`ORDER#id`) and per checkout session (`SESSION#id`).

    Uses the low-level client so a create can be one transaction; `client` is injectable for tests.
    `due_index_shards` is how many due-index partitions each work queue is spread over (DUE_INDEX_SHARDS).
    """

    def __init__(self, table_name: str, client: Any, *, due_index_shards: int = 1) -> None:
        self._table = table_name
        self._client = client
        self._shards = due_index_shards

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
            item["work_queue"] = {"S": due_partition(work.queue, order.order_id, self._shards)}
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
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
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
        except (ClientError, BotoCoreError) as exc:
            # The order id is new, so an order stored under it was put by this very transaction: its first
            # attempt went through and only the answer was lost.
            if self._recognised(order.order_id, _identity(order), exc) is not None:
                return
            if isinstance(exc, ClientError) and is_condition_failure(exc):
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
            values[":queue"] = {"S": due_partition(work.queue, after.order_id, self._shards)}
            values[":due"] = {"N": str(work.due_at)}
        self._conditional_update(
            after.order_id,
            _identity(after),
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            "#state = :expected_state AND #version = :expected_version",
            names,
            values,
        )

    def write_claim(self, before: Claimable, *, owner: str, lease_until: int, now: int) -> Order:
        """Lease `before` (as read: an order, or its due-index entry) to `owner`; returns the whole order as claimed."""
        identity = {
            "version": before.version + 1,
            "saga_state": before.saga_state.value,
            "lease_owner": owner,
            "lease_until": lease_until,
        }
        stored = self._conditional_update(
            before.order_id,
            identity,
            # Pushing due_at to the lease's end keeps the order out of other workers' due queries.
            "SET #version = :version, lease_owner = :owner, lease_until = :until, due_at = :until",
            "#state = :expected_state AND #version = :expected_version "
            "AND (attribute_not_exists(lease_until) OR lease_until < :now)",
            {"#state": "saga_state", "#version": "version"},
            {
                ":version": {"N": str(before.version + 1)},
                ":owner": {"S": owner},
                ":until": {"N": str(lease_until)},
                ":now": {"N": str(now)},
                ":expected_state": {"S": before.saga_state.value},
                ":expected_version": {"N": str(before.version)},
            },
            return_new=True,
        )
        assert stored is not None
        return Order.model_validate(from_item(stored))

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
            values[":queue"] = {"S": due_partition(work.queue, after.order_id, self._shards)}
            values[":due"] = {"N": str(work.due_at)}
        self._conditional_update(
            after.order_id,
            _identity(after),
            f"{update} REMOVE lease_owner, lease_until",
            "#state = :expected_state AND #version = :expected_version",
            names,
            values,
        )

    def _conditional_update(
        self,
        order_id: str,
        identity: dict[str, Any],
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        *,
        return_new: bool = False,
    ) -> dict[str, Any] | None:
        """One conditional write; a retry that finds what it set already stored is the write succeeding.

        Returns the item as written when `return_new` (ALL_NEW costs no read capacity).
        """
        try:
            answer = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": _order_pk(order_id)}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW" if return_new else "NONE",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except (ClientError, BotoCoreError) as exc:
            stored = self._recognised(order_id, identity, exc)
            if stored is not None:
                return stored
            if isinstance(exc, ClientError) and is_condition_failure(exc):
                raise ConcurrentUpdate(f"order {order_id} was moved or claimed by another actor") from exc
            raise
        return dict(answer["Attributes"]) if return_new else None

    def _recognised(
        self, order_id: str, identity: dict[str, Any], exc: ClientError | BotoCoreError
    ) -> dict[str, Any] | None:
        """The stored order if a write that failed had in fact stored what it set (its answer lost, then its retry
        refused), else None.

        A failed condition brings the stored item with it (ALL_OLD). Any other failure (botocore's retries spent
        on lost answers, a 5xx) leaves the outcome unknown, so one consistent read tells; if that read fails
        too, the caller gets the original error.
        """
        if isinstance(exc, ClientError) and is_condition_failure(exc):
            stored = _condition_failure_item(exc)
        else:
            try:
                stored = self._client.get_item(
                    TableName=self._table, Key={"pk": {"S": _order_pk(order_id)}}, ConsistentRead=True
                ).get("Item")
            except (ClientError, BotoCoreError):
                return None
        return dict(stored) if stored and _written_by(identity, stored) else None

    def due(self, queue: WorkQueue, now: int, *, page_size: int = 100) -> Iterator[DueOrder]:
        """Orders in `queue` whose due_at has passed, oldest first, by Queries on the sparse due-index.

        Every partition of the queue (each shard, and the unsharded one of orders written before sharding) is
        queried at once, at most SHARD_QUERY_CONCURRENCY in flight, and the answers merged by due_at. Pages are
        read lazily, one ahead per partition, so a run that stops early reads little past where it stopped.
        """
        partitions = due_partitions(queue, self._shards)
        with ThreadPoolExecutor(
            max_workers=min(len(partitions), SHARD_QUERY_CONCURRENCY), thread_name_prefix="due-query"
        ) as pool:
            first_pages = [pool.submit(self._due_page, self._due_query(p, now, page_size)) for p in partitions]
            streams = [self._due_stream(pool, page) for page in first_pages]
            yield from heapq.merge(*streams, key=lambda due: due.due_at)

    def _due_query(self, partition: str, now: int, page_size: int) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "work_queue = :queue AND due_at <= :now",
            "ExpressionAttributeValues": {":queue": {"S": partition}, ":now": {"N": str(now)}},
            "Limit": page_size,
        }

    def _due_page(self, query: dict[str, Any]) -> dict[str, Any]:
        try:
            page: dict[str, Any] = self._client.query(**query)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") != "ValidationException" or "backfilling" not in str(error.get("Message", "")):
                raise
            query = {**query, "IndexName": PREVIOUS_DUE_INDEX}
            page = self._client.query(**query)
        page["query"] = query
        return page

    def _due_stream(self, pool: ThreadPoolExecutor, first: Future[dict[str, Any]]) -> Iterator[DueOrder]:
        pending: Future[dict[str, Any]] | None = first
        while pending is not None:
            page = pending.result()
            pending = None
            if "LastEvaluatedKey" in page:
                pending = pool.submit(self._due_page, {**page["query"], "ExclusiveStartKey": page["LastEvaluatedKey"]})
            for item in page.get("Items", []):
                data = from_item(item)
                yield DueOrder(
                    order_id=str(data["pk"]).removeprefix("ORDER#"),
                    saga_state=SagaState(data["saga_state"]),
                    version=int(data["version"]),
                    due_at=int(data["due_at"]),
                )
