"""The payment gateway: Stripe's PaymentIntents with manual capture, over httpx, every answer sorted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field


class Intent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    amount_refunded: int = 0
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def held(self) -> bool:
        return self.status == "requires_capture"

    @property
    def captured(self) -> bool:
        return self.status == "succeeded"

    @property
    def canceled(self) -> bool:
        return self.status == "canceled"


class Refund(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    amount: int
    status: str


class PaymentError(Exception):
    """Base of every answer that is not a plain success."""


class PaymentDeclined(PaymentError):
    """A business answer: the card was declined; nothing is held."""

    def __init__(self, message: str, *, intent: Intent | None = None, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.intent = intent
        self.decline_code = decline_code


class PaymentNotSent(PaymentError):
    """The request never reached the provider (connection refused, DNS, connect timeout)."""


class PaymentOutcomeUnknown(PaymentError):
    """The request may have been processed: read timeout, 5xx, dropped connection, key in use."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class PaymentUnexpectedState(PaymentError):
    """`payment_intent_unexpected_state`: the step was already done (or can no longer be)."""

    def __init__(self, message: str, *, intent: Intent | None) -> None:
        super().__init__(message)
        self.intent = intent


class PaymentRejected(PaymentError):
    """A 4xx that is neither a decline nor an unexpected state: the request itself is wrong."""

    def __init__(self, message: str, *, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PaymentGateway(Protocol):
    def authorize(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        timeout: float,
    ) -> Intent: ...

    def capture(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Intent: ...

    def cancel(self, intent_id: str, *, idempotency_key: str, timeout: float) -> Intent: ...

    def retrieve(self, intent_id: str, *, timeout: float) -> Intent: ...

    def search_by_order(self, order_id: str, *, timeout: float) -> list[Intent]: ...

    def refund(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Refund: ...


# A connect phase that has not finished in this long has not sent anything; keep it short so a dead
# provider is reported as "not sent" (safe to say nothing is held) rather than "unknown".
CONNECT_TIMEOUT_SECONDS = 3.0


class StripePaymentGateway:
    """PaymentIntents over HTTPS. Every call takes an explicit timeout; there is no default to forget."""

    def __init__(self, base_url: str, api_key: Callable[[], str], client: httpx.Client | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        # No retries in the transport: a retry must be the saga's decision, made after a read-back.
        self._client = client or httpx.Client(transport=httpx.HTTPTransport(retries=0))

    def authorize(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        timeout: float,
    ) -> Intent:
        data = {
            "amount": str(amount),
            "currency": currency,
            "payment_method": payment_method,
            "confirm": "true",
            "capture_method": "manual",
            "metadata[order_id]": order_id,
        }
        return Intent.model_validate(self._call("POST", "/v1/payment_intents", timeout, data, idempotency_key))

    def capture(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Intent:
        path = f"/v1/payment_intents/{intent_id}/capture"
        body = self._call("POST", path, timeout, {"amount_to_capture": str(amount)}, idempotency_key)
        return Intent.model_validate(body)

    def cancel(self, intent_id: str, *, idempotency_key: str, timeout: float) -> Intent:
        body = self._call("POST", f"/v1/payment_intents/{intent_id}/cancel", timeout, {}, idempotency_key)
        return Intent.model_validate(body)

    def retrieve(self, intent_id: str, *, timeout: float) -> Intent:
        return Intent.model_validate(self._call("GET", f"/v1/payment_intents/{intent_id}", timeout))

    def retrieve_with_charge(self, intent_id: str, *, timeout: float) -> dict[str, Any]:
        """The intent as Stripe answers it, its latest charge expanded (capture_before): the operator console's read."""
        return self._call("GET", f"/v1/payment_intents/{intent_id}", timeout, params={"expand[]": "latest_charge"})

    def search_by_order(self, order_id: str, *, timeout: float) -> list[Intent]:
        query = {"query": f"metadata['order_id']:'{order_id}'"}
        body = self._call("GET", "/v1/payment_intents/search", timeout, params=query)
        return [Intent.model_validate(i) for i in body.get("data", [])]

    def refund(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Refund:
        data = {"payment_intent": intent_id, "amount": str(amount)}
        return Refund.model_validate(self._call("POST", "/v1/refunds", timeout, data, idempotency_key))

    def _call(
        self,
        method: str,
        path: str,
        timeout: float,
        data: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._api_key()}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        budget = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_SECONDS))
        try:
            response = self._client.request(
                method, self._base + path, data=data, params=params, headers=headers, timeout=budget
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PaymentNotSent(f"{method} {path}: provider unreachable ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise PaymentOutcomeUnknown(f"{method} {path}: no answer within {timeout:.1f}s", timed_out=True) from exc
        except httpx.TransportError as exc:
            raise PaymentOutcomeUnknown(f"{method} {path}: answer lost ({type(exc).__name__})") from exc
        return _sort_answer(method, path, response)


def _sort_answer(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        if not body:
            raise PaymentOutcomeUnknown(f"{method} {path}: {response.status_code} with an unreadable body")
        return body
    raw_error = body.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    message = f"{method} {path}: {response.status_code} {error.get('code') or error.get('type') or ''}".strip()
    if error.get("message"):
        message += f": {error['message']}"
    raw_intent = error.get("payment_intent")
    intent = Intent.model_validate(raw_intent) if isinstance(raw_intent, dict) else None
    if response.status_code == 402 or error.get("type") == "card_error":
        raise PaymentDeclined(message, intent=intent, decline_code=error.get("decline_code") or error.get("code"))
    if error.get("code") == "payment_intent_unexpected_state":
        raise PaymentUnexpectedState(message, intent=intent)
    if response.status_code == 429:
        raise PaymentNotSent(message)  # rate limited: rejected before processing, nothing stored
    if response.status_code == 409 or response.status_code >= 500:
        # 409 is "key in use": the first request with this key is still running.
        raise PaymentOutcomeUnknown(message)
    raise PaymentRejected(message, status=response.status_code, code=error.get("code"))
