"""The warehouse client: stock reservations over HTTPS, every call with a timeout."""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict


class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    status: str
    expires_at: str | None = None


class WarehouseError(Exception):
    """Base of the warehouse's failures."""


class OutOfStock(WarehouseError):
    def __init__(self, message: str, *, sku: str | None) -> None:
        super().__init__(message)
        self.sku = sku


class WarehouseUnavailable(WarehouseError):
    """No usable answer. `status` is the HTTP status when an answer came back (a 5xx the warehouse stores and
    replays under the key); None after a timeout or a dropped connection (the request may still be running)."""

    def __init__(self, message: str, *, timed_out: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.status = status


class WarehouseRejected(WarehouseError):
    """A 4xx the warehouse gave for a request we built wrongly, or an unknown reservation."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Warehouse(Protocol):
    def reserve(
        self, *, reference: str, items: list[dict[str, Any]], idempotency_key: str, timeout: float
    ) -> Reservation: ...

    def release(self, reservation_id: str, *, idempotency_key: str, timeout: float) -> Reservation: ...


class WarehouseClient:
    def __init__(self, base_url: str, client: httpx.Client | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._client = client or httpx.Client(transport=httpx.HTTPTransport(retries=0))

    def reserve(
        self, *, reference: str, items: list[dict[str, Any]], idempotency_key: str, timeout: float
    ) -> Reservation:
        body = {"reference": reference, "items": items}
        return Reservation.model_validate(self._post("/v1/reservations", body, idempotency_key, timeout))

    def release(self, reservation_id: str, *, idempotency_key: str, timeout: float) -> Reservation:
        return Reservation.model_validate(
            self._post(f"/v1/reservations/{reservation_id}/release", {}, idempotency_key, timeout)
        )

    def get(self, reservation_id: str, *, timeout: float) -> Reservation:
        """The reservation as the warehouse holds it now (held, released, ...): the operator console's read."""
        return Reservation.model_validate(self._send("GET", f"/v1/reservations/{reservation_id}", None, None, timeout))

    def _post(self, path: str, body: dict[str, Any], idempotency_key: str, timeout: float) -> dict[str, Any]:
        return self._send("POST", path, body, idempotency_key, timeout)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, idempotency_key: str | None, timeout: float
    ) -> dict[str, Any]:
        try:
            response = self._client.request(
                method,
                self._base + path,
                json=body,
                headers={"Idempotency-Key": idempotency_key} if idempotency_key else {},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            )
        except httpx.TimeoutException as exc:
            raise WarehouseUnavailable(f"{method} {path}: no answer within {timeout:.1f}s", timed_out=True) from exc
        except httpx.TransportError as exc:
            raise WarehouseUnavailable(f"{method} {path}: {type(exc).__name__}") from exc
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.is_success:
            return data
        message = f"{method} {path}: {response.status_code} {data.get('error', '')}: {data.get('message', '')}"
        if response.status_code == 409 and data.get("error") == "out_of_stock":
            raise OutOfStock(message, sku=data.get("sku"))
        if response.status_code in (408, 409, 429) or response.status_code >= 500:
            raise WarehouseUnavailable(message, status=response.status_code)
        raise WarehouseRejected(message, status=response.status_code)
