"""Opening a checkout session: price the cart, reserve its stock, record the session."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from checkout.deadline import Deadline, OutOfTime
from checkout.errors import OutOfStockError, WarehouseTimeoutError, WarehouseUnavailableError
from checkout.observability import logger
from checkout.orders import CheckoutSession, LineItem, OrderStore
from checkout.saga import iso
from checkout.warehouse import OutOfStock, Warehouse, WarehouseError, WarehouseUnavailable


class SessionOpener:
    def __init__(
        self,
        *,
        store: OrderStore,
        warehouse: Warehouse,
        session_ttl_seconds: int,
        warehouse_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._warehouse_timeout = warehouse_timeout
        self._store = store
        self._warehouse = warehouse
        self._ttl = session_ttl_seconds
        self._clock = clock

    def open(
        self, *, customer_id: str, currency: str, items: list[LineItem], payment_method: str | None, deadline: Deadline
    ) -> CheckoutSession:
        session_id = f"cs_{uuid.uuid4().hex}"
        try:
            reservation = self._warehouse.reserve(
                reference=session_id,
                items=[{"sku": i.sku, "quantity": i.quantity} for i in items],
                idempotency_key=f"{session_id}:reserve",
                timeout=deadline.call_timeout(self._warehouse_timeout),
            )
        except OutOfStock as exc:
            raise OutOfStockError(f"not enough stock for {exc.sku}", sku=exc.sku) from exc
        except WarehouseUnavailable as exc:
            error = WarehouseTimeoutError if exc.timed_out else WarehouseUnavailableError
            raise error("the warehouse did not answer; try again shortly") from exc
        except (WarehouseError, OutOfTime) as exc:
            raise WarehouseUnavailableError(f"the warehouse refused the reservation: {exc}") from exc
        now = self._clock()
        session = CheckoutSession(
            session_id=session_id,
            customer_id=customer_id,
            currency=currency,
            items=items,
            amount_total=sum(i.quantity * i.unit_amount for i in items),
            payment_method=payment_method,
            reservation_id=reservation.id,
            created_at=iso(now),
            expires_at=iso(now + self._ttl),
            expires_at_epoch=int(now + self._ttl),
        )
        try:
            self._store.put_session(session)
        except (ClientError, BotoCoreError):
            # Nothing may stay half-written: give the stock back (warehouse holds also expire by themselves).
            try:
                self._warehouse.release(
                    reservation.id, idempotency_key=f"{session_id}:release", timeout=self._warehouse_timeout
                )
            except WarehouseError:
                logger.exception("could not release the reservation of an unrecorded session")
            raise
        return session
