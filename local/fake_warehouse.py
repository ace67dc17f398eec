"""A fake warehouse reservations API with stock, fault injection and idempotency, for local runs and tests."""

import copy
import json
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from local.fakes import (
    BadRequest,
    Call,
    FakeServer,
    JsonObject,
    Request,
    Response,
    Route,
    iso,
    new_id,
    serve_main,
    utc_now,
)

DEFAULT_PORT = 12112
DEFAULT_STOCK = 1_000_000
HOLD_FOR = timedelta(hours=1)
_RESERVATION = re.compile(r"/v1/reservations/([^/]+)")
_RELEASE = re.compile(r"/v1/reservations/([^/]+)/release")
_FAULT_CODES = {
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class FakeWarehouse(FakeServer):
    """Stock reservations: reserve (hold stock), release (give it back, idempotently), get."""

    name = "fake-warehouse"
    operations: ClassVar[frozenset[str]] = frozenset({"reserve", "release", "get"})
    ledger_ops: ClassVar[frozenset[str]] = frozenset({"reserved", "released"})

    def __init__(self, port: int = 0, *, verbose: bool = False) -> None:
        super().__init__(port, verbose=verbose)
        self._stock: dict[str, int] = {}
        self._reservations: dict[str, JsonObject] = {}

    # ---- Python API ------------------------------------------------------------------------------

    def set_stock(self, sku: str, quantity: int) -> None:
        if quantity < 0:
            raise ValueError("quantity must be >= 0")
        with self._lock:
            self._stock[sku] = quantity

    def stock(self, sku: str) -> int:
        """Units of a sku available to reserve now (held units are not available)."""
        with self._lock:
            return self._stock.get(sku, DEFAULT_STOCK)

    @property
    def reservations(self) -> dict[str, JsonObject]:
        """id → reservation, in creation order (a copy)."""
        with self._lock:
            return copy.deepcopy(self._reservations)

    def count(self, op: str, reference: str | None = None) -> int:
        """Ledger events of one kind: reserved or released."""
        return self._count_events(op, "reference", reference)

    # ---- provider shape --------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str, **extra: Any) -> Response:
        return Response(status, {"error": code, "message": message, **extra})

    def _invalid(self, message: str) -> Response:
        response = self._error(422, "validation_error", message)
        response.store = False
        return response

    def _fault_response(self, status: int) -> Response:
        return self._error(status, _FAULT_CODES.get(status, f"http_{status}"), f"Injected fault: HTTP {status}.")

    def _key_in_use(self, key: str) -> Response:
        return self._error(
            409, "idempotency_key_in_use", f"Another request with idempotency key {key!r} is still in progress."
        )

    def _key_reused(self, key: str) -> Response:
        return self._error(
            400, "idempotency_error", f"Idempotency key {key!r} was already used with a different request."
        )

    def _route(self, method: str, path: str) -> Route | None:
        if method == "POST" and path == "/v1/reservations":
            return Route("reserve", self._reserve)
        if method == "POST" and (match := _RELEASE.fullmatch(path)):
            return Route("release", self._release, (match[1],))
        if method == "GET" and (match := _RESERVATION.fullmatch(path)):
            return Route("get", self._get, (match[1],))
        return None

    def _parse(self, request: Request) -> Any:
        if not request.body.strip():
            return None
        try:
            return json.loads(request.body)
        except ValueError:
            raise BadRequest(self._invalid("Request body must be valid JSON.")) from None

    def _reset_state(self) -> None:
        self._stock.clear()
        self._reservations.clear()

    # ---- operations (run under the lock) ---------------------------------------------------------

    def _reserve(self, call: Call) -> Response:
        body = call.params
        if not isinstance(body, dict):
            return self._invalid("Body must be a JSON object with reference and items.")
        reference = body.get("reference")
        items = body.get("items")
        if not isinstance(reference, str) or not reference:
            return self._invalid("reference must be a non-empty string.")
        if not isinstance(items, list) or not items:
            return self._invalid("items must be a non-empty list.")
        wanted: dict[str, int] = {}
        for index, item in enumerate(items):
            sku = item.get("sku") if isinstance(item, dict) else None
            quantity = item.get("quantity") if isinstance(item, dict) else None
            if not isinstance(sku, str) or not sku:
                return self._invalid(f"items[{index}].sku must be a non-empty string.")
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                return self._invalid(f"items[{index}].quantity must be a positive integer.")
            wanted[sku] = wanted.get(sku, 0) + quantity
        for sku, quantity in wanted.items():
            available = self._stock.get(sku, DEFAULT_STOCK)
            if quantity > available:
                return self._error(
                    409,
                    "out_of_stock",
                    f"Only {available} of {sku} available, {quantity} requested.",
                    sku=sku,
                    available=available,
                    requested=quantity,
                )
        for sku, quantity in wanted.items():
            self._stock[sku] = self._stock.get(sku, DEFAULT_STOCK) - quantity
        now = utc_now()
        clean_items = [{"sku": item["sku"], "quantity": item["quantity"]} for item in items]
        reservation: JsonObject = {
            "id": new_id("res"),
            "status": "held",
            "reference": reference,
            "items": clean_items,
            "created_at": iso(now),
            "expires_at": iso(now + HOLD_FOR),
            "released_at": None,
        }
        self._reservations[reservation["id"]] = reservation
        self._record_event(
            "reserved", call, id=reservation["id"], reference=reference, items=copy.deepcopy(clean_items)
        )
        return Response(201, copy.deepcopy(reservation))

    def _release(self, call: Call) -> Response:
        reservation = self._reservations.get(call.args[0])
        if reservation is None:
            return self._missing(call.args[0])
        if reservation["status"] == "held":
            for item in reservation["items"]:
                sku = item["sku"]
                self._stock[sku] = self._stock.get(sku, DEFAULT_STOCK) + item["quantity"]
            reservation.update(status="released", released_at=iso(utc_now()))
            self._record_event(
                "released",
                call,
                id=reservation["id"],
                reference=reservation["reference"],
                items=copy.deepcopy(reservation["items"]),
            )
        return Response(200, copy.deepcopy(reservation))

    def _get(self, call: Call) -> Response:
        reservation = self._reservations.get(call.args[0])
        if reservation is None:
            return self._missing(call.args[0])
        return Response(200, copy.deepcopy(reservation))

    def _missing(self, reservation_id: str) -> Response:
        return self._error(404, "not_found", f"No reservation {reservation_id!r}.")


def main(argv: Sequence[str] | None = None) -> int:
    return serve_main(lambda port, verbose: FakeWarehouse(port, verbose=verbose), DEFAULT_PORT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
