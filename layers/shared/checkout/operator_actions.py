"""What operators do with failed compensations: list, show, retry, resolve by hand, read an order (admin API, CLI)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, ValidationError

from checkout.api_models import MAX_NOTE_LENGTH
from checkout.compensation_retries import mark_order_compensated, seconds_between
from checkout.errors import CheckoutError, OrderNotFound, ValidationFailed
from checkout.failed_compensations import (
    FailedCompensation,
    FailedCompensationLedger,
    RecordStatus,
    action_entry,
)
from checkout.observability import MetricUnit, logger, metrics
from checkout.orders import OrderStore
from checkout.saga import Saga, iso

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
# Without a status filter, one Query per status in this order: what needs a person first.
LISTING_ORDER = (RecordStatus.FAILED, RecordStatus.RETRYING, RecordStatus.PENDING, RecordStatus.RESOLVED)


class CompensationNotFound(CheckoutError):
    status, code = 404, "compensation_not_found"


class CompensationResolved(CheckoutError):
    status, code = 409, "compensation_resolved"


class QueueUnavailable(CheckoutError):
    status, code = 503, "queue_unavailable"


class _Cursor(BaseModel):
    """Where a listing continues: the status being read and the index key of the last record returned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: RecordStatus
    after: dict[str, str] | None = None


def encode_cursor(status: RecordStatus, after: dict[str, str] | None) -> str:
    raw = _Cursor(status=status, after=after).model_dump_json(exclude_none=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = _Cursor.model_validate_json(raw)
    except (binascii.Error, ValueError, ValidationError) as exc:
        raise ValidationFailed("cursor: not a cursor this API returned") from exc
    if decoded.after is not None and set(decoded.after) != {"id", "status", "created_at"}:
        raise ValidationFailed("cursor: not a cursor this API returned")
    if decoded.after is not None and decoded.after["status"] != decoded.status.value:
        raise ValidationFailed("cursor: not a cursor this API returned")
    return decoded


@dataclass(frozen=True)
class Page:
    items: list[FailedCompensation]
    next_cursor: str | None

    def body(self) -> dict[str, Any]:
        return {"items": [record.public_view() for record in self.items], "next_cursor": self.next_cursor}


class OperatorActions:
    """The admin API and `checkout-admin` both call these; every change is recorded on the record and logged."""

    def __init__(
        self, *, ledger: FailedCompensationLedger, store: OrderStore, saga: Saga, clock: Callable[[], float]
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._saga = saga
        self._clock = clock

    def list_records(
        self, *, status: RecordStatus | None = None, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page:
        """One page of records, oldest first within a status; without a status, failed → retrying → pending → resolved.

        Each status is one Query on the status-index. A record that changes status between two pages may be
        listed twice or not at all; `show` always reads the record itself.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"limit: must be between 1 and {MAX_PAGE_SIZE}")
        statuses = [status] if status is not None else list(LISTING_ORDER)
        start = decode_cursor(cursor) if cursor else _Cursor(status=statuses[0])
        if start.status not in statuses:
            raise ValidationFailed("cursor: belongs to another status filter")
        items: list[FailedCompensation] = []
        remaining = statuses[statuses.index(start.status) :]
        for position, current in enumerate(remaining):
            found, more = self._ledger.list_by_status(
                current, limit=limit - len(items), after=start.after if position == 0 else None
            )
            items += found
            if len(items) < limit:
                continue
            if more:
                return Page(items, encode_cursor(current, items[-1].index_key()))
            following = next((s for s in remaining[position + 1 :] if self._has_any(s)), None)
            return Page(items, encode_cursor(following, None) if following else None)
        return Page(items, None)

    def counts(self) -> dict[str, int]:
        """How many records are in each status, what needs a person first."""
        return {status.value: self._ledger.count_by_status(status) for status in LISTING_ORDER}

    def _has_any(self, status: RecordStatus) -> bool:
        found, _ = self._ledger.list_by_status(status, limit=1)
        return bool(found)

    def show(self, compensation_id: str) -> FailedCompensation:
        record = self._ledger.get(compensation_id)
        if record is None:
            raise CompensationNotFound(f"no failed compensation {compensation_id}")
        return record

    def retry(self, compensation_id: str, *, by: str, note: str | None = None) -> FailedCompensation:
        """Queue the record again for the dlq_processor and mark it `pending`; 409 once it is resolved."""
        note = _checked_note(note) if note is not None else None
        record = self.show(compensation_id)
        if not record.is_open:
            raise CompensationResolved(f"{compensation_id} was resolved at {record.resolved_at}")
        action = action_entry("retry", by=by, at=iso(self._clock()), note=note)
        try:
            updated = self._ledger.requeue(compensation_id, action=action)
        except (ClientError, BotoCoreError) as exc:
            logger.exception("could not queue the failed compensation", extra={"compensation_id": compensation_id})
            raise QueueUnavailable("the failed-compensations queue refused the message; try again") from exc
        if updated is None:
            raise CompensationResolved(f"{compensation_id} was resolved meanwhile")
        logger.info(
            "operator re-queued a failed compensation",
            extra={"compensation_id": compensation_id, "order_id": record.order_id, "by": by, "note": note},
        )
        return updated

    def resolve(self, compensation_id: str, *, by: str, note: str) -> FailedCompensation:
        """Close a record by hand (after fixing it at the provider) and move its order to COMPENSATED."""
        note = _checked_note(note)
        record = self.show(compensation_id)
        if not record.is_open:
            raise CompensationResolved(f"{compensation_id} was resolved at {record.resolved_at}")
        # The order first: if this fails the record stays open and the operator's retry of resolve finishes it.
        mark_order_compensated(
            self._store, self._saga, record.order_id, reason=f"resolved by hand by {by} ({compensation_id}): {note}"
        )
        action = action_entry("resolve", by=by, at=iso(self._clock()), note=note)
        resolved = self._ledger.resolve(compensation_id, by=by, action=action)
        if resolved is None:
            raise CompensationResolved(f"{compensation_id} was resolved meanwhile")
        assert resolved.resolved_at is not None
        seconds = seconds_between(resolved.created_at, resolved.resolved_at)
        metrics.add_metric(name="CompensationResolvedByHand", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="CompensationResolutionSeconds", unit=MetricUnit.Seconds, value=seconds)
        logger.info(
            "operator resolved a failed compensation by hand",
            extra={"compensation_id": compensation_id, "order_id": record.order_id, "by": by, "note": note},
        )
        return resolved

    def order(self, order_id: str) -> dict[str, Any]:
        """An order as operators need it: every field, its history, and its failed-compensation records."""
        order = self._store.get_order(order_id)
        if order is None:
            raise OrderNotFound(f"no order {order_id}")
        view = order.model_dump(mode="json", by_alias=True, exclude={"lease_owner", "lease_until"})
        view["compensations"] = [record.public_view() for record in self._ledger.for_order(order_id)]
        return view


def _checked_note(note: str) -> str:
    note = note.strip()
    if not note:
        raise ValidationFailed("note: must say what was done, it cannot be empty")
    if len(note) > MAX_NOTE_LENGTH:
        raise ValidationFailed(f"note: at most {MAX_NOTE_LENGTH} characters")
    return note
