"""The payment gateway: Stripe's PaymentIntents with manual capture, over httpx, every answer sorted.

Hand-written rather than the official `stripe` package: its HTTPXClient takes one timeout per client (no
per-request timeout in RequestOptions), folds connect and read failures into one APIConnectionError, and
sleeps between its own retries without knowing the Lambda's deadline (docs/decisions.md, "Stripe client").
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

# Pinned so Stripe's answers do not change shape when the account's default version moves
# (docs.stripe.com/api/versioning). Chosen in docs/decisions.md, "Stripe API version".
STRIPE_API_VERSION = "2026-07-29.dahlia"


def _none_to(default: Any) -> BeforeValidator:
    """Stripe sends null for absent values; a null where we expect a default must not fail the parse."""
    return BeforeValidator(lambda value: default if value is None else value)


class Intent(BaseModel):
    """A PaymentIntent, as much of it as the saga reads (docs.stripe.com/api/payment_intents/object).

    Every field but the id tolerates null and unknown values: an unexpected answer is sorted, never a 500.
    A PaymentIntent has no refunded amount: refunds are their own objects (see `Refund`).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    status: Annotated[str, _none_to("")] = ""
    amount: Annotated[int, _none_to(0)] = 0
    currency: Annotated[str, _none_to("")] = ""
    amount_received: Annotated[int, _none_to(0)] = 0
    metadata: Annotated[dict[str, str], _none_to({})] = {}
    client_secret: str | None = None
    next_action: dict[str, Any] | None = None
    last_payment_error: dict[str, Any] | None = None
    latest_charge: str | dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self.status == "requires_capture"

    @property
    def captured(self) -> bool:
        return self.status == "succeeded"

    @property
    def canceled(self) -> bool:
        return self.status == "canceled"

    @property
    def needs_action(self) -> bool:
        """3-D Secure (or another customer step) is pending: nothing is held yet."""
        return self.status in ("requires_action", "requires_confirmation")

    @property
    def failed(self) -> bool:
        """Declined, or authentication failed: nothing is held and the intent waits for another method."""
        return self.status == "requires_payment_method"

    @property
    def processing(self) -> bool:
        return self.status == "processing"


class Refund(BaseModel):
    """A Refund (docs.stripe.com/api/refunds/object). `status` may be null on old objects."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    amount: Annotated[int, _none_to(0)] = 0
    status: str | None = None
    payment_intent: str | None = None

    @property
    def counts(self) -> bool:
        """The money is on its way back or back: pending and succeeded (and a null status, from before refund
        statuses existed, when a refund object meant the refund was made)."""
        return self.status in (None, "pending", "succeeded")


class PaymentError(Exception):
    """Base of every answer that is not a plain success."""


class PaymentDeclined(PaymentError):
    """A business answer: the card was declined (or the payment method refused); nothing is held."""

    def __init__(self, message: str, *, intent: Intent | None = None, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.intent = intent
        self.decline_code = decline_code


class PaymentNotSent(PaymentError):
    """The request was not processed: never reached the provider (connection refused, DNS, connect timeout)."""


class PaymentRateLimited(PaymentNotSent):
    """429 on every try within the call's budget. Stripe's rate limiter answers before the idempotency layer
    and stores nothing (docs.stripe.com/rate-limits), so it is "not sent"."""


class PaymentOutcomeUnknown(PaymentError):
    """The request may have been processed: read timeout, 5xx, 424, dropped connection, key in use.

    `answered`: the provider answered (a 5xx or 424 it stores and replays under the key), as opposed to a
    timeout or lost answer, after which the request may still be running. Only an answered error allows a
    second key, and only after a read-back proves the step did not happen (ARCHITECTURE.md section 4).
    """

    def __init__(
        self, message: str, *, timed_out: bool = False, answered: bool = False, replayed: bool = False
    ) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.answered = answered
        # `Idempotent-Replayed: true`: the provider stored this answer earlier; this send did nothing new.
        self.replayed = replayed


class PaymentInProgress(PaymentOutcomeUnknown):
    """409 `idempotency_key_in_use`: the first request with this key is still running (not stored)."""


class PaymentUnexpectedState(PaymentError):
    """`payment_intent_unexpected_state`: the step was already done (or can no longer be)."""

    def __init__(self, message: str, *, intent: Intent | None) -> None:
        super().__init__(message)
        self.intent = intent


class PaymentRejected(PaymentError):
    """A 4xx that is neither a decline nor an unexpected state: the request itself is wrong."""

    def __init__(self, message: str, *, status: int, code: str | None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


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

    def list_refunds(self, intent_id: str, *, timeout: float) -> list[Refund]: ...


# A connect phase that has not finished in this long has not sent anything; keep it short so a dead
# provider is reported as "not sent" (safe to say nothing is held) rather than "unknown".
CONNECT_TIMEOUT_SECONDS = 3.0
# 429 backoff when Stripe sends no Retry-After: 0.5 s doubling, capped, with jitter; never past the call's budget.
RATE_LIMIT_BACKOFF_SECONDS = 0.5
RATE_LIMIT_BACKOFF_MAX_SECONDS = 4.0
# An attempt given less than this is not worth sending after a 429.
MIN_ATTEMPT_SECONDS = 0.5


class StripePaymentGateway:
    """PaymentIntents over HTTPS. Every call takes an explicit timeout; there is no default to forget.

    The timeout bounds the whole call, 429 retries included, so no call outlives the Lambda's deadline.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Callable[[], str],
        client: httpx.Client | None = None,
        *,
        return_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        # No retries in the transport: a retry must be the saga's decision, made after a read-back.
        self._client = client or httpx.Client(transport=httpx.HTTPTransport(retries=0))
        self._return_url = return_url or None
        self._sleep = sleep
        self._monotonic = monotonic

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
        # Since 2023-08-16 automatic payment methods are on, and a confirm at creation needs a return_url unless
        # redirects are ruled out (docs.stripe.com/changelog/2023-08-16/automatic-payment-methods).
        if self._return_url:
            data["return_url"] = self._return_url
        else:
            data["automatic_payment_methods[enabled]"] = "true"
            data["automatic_payment_methods[allow_redirects]"] = "never"
        return _intent(self._call("POST", "/v1/payment_intents", timeout, data, idempotency_key))

    def capture(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Intent:
        path = f"/v1/payment_intents/{intent_id}/capture"
        return _intent(self._call("POST", path, timeout, {"amount_to_capture": str(amount)}, idempotency_key))

    def cancel(self, intent_id: str, *, idempotency_key: str, timeout: float) -> Intent:
        return _intent(self._call("POST", f"/v1/payment_intents/{intent_id}/cancel", timeout, {}, idempotency_key))

    def retrieve(self, intent_id: str, *, timeout: float) -> Intent:
        return _intent(self._call("GET", f"/v1/payment_intents/{intent_id}", timeout))

    def retrieve_with_charge(self, intent_id: str, *, timeout: float) -> dict[str, Any]:
        """The intent as Stripe answers it, its latest charge expanded (capture_before): the operator console's read."""
        return self._call("GET", f"/v1/payment_intents/{intent_id}", timeout, params={"expand[]": "latest_charge"})

    def search_by_order(self, order_id: str, *, timeout: float) -> list[Intent]:
        query = {"query": f"metadata['order_id']:'{order_id}'"}
        body = self._call("GET", "/v1/payment_intents/search", timeout, params=query)
        return [_intent(i) for i in _list_data(body)]

    def refund(self, intent_id: str, *, amount: int, idempotency_key: str, timeout: float) -> Refund:
        data = {"payment_intent": intent_id, "amount": str(amount)}
        return _refund(self._call("POST", "/v1/refunds", timeout, data, idempotency_key))

    def list_refunds(self, intent_id: str, *, timeout: float) -> list[Refund]:
        # docs.stripe.com/api/refunds/list: filtered by payment_intent, newest first, at most 100 a page.
        body = self._call("GET", "/v1/refunds", timeout, params={"payment_intent": intent_id, "limit": "100"})
        return [_refund(r) for r in _list_data(body)]

    def _call(
        self,
        method: str,
        path: str,
        timeout: float,
        data: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._api_key()}", "Stripe-Version": STRIPE_API_VERSION}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        end = self._monotonic() + timeout
        retries = 0
        while True:
            budget = end - self._monotonic()
            response = self._send(method, path, budget, data, params, headers)
            if response.status_code != 429:
                return _sort_answer(method, path, response)
            wait = _rate_limit_wait(response, retries)
            if wait is None or self._monotonic() + wait + MIN_ATTEMPT_SECONDS > end:
                raise PaymentRateLimited(f"{method} {path}: 429 rate limited ({retries + 1} tries)")
            self._sleep(wait)
            retries += 1

    def _send(
        self,
        method: str,
        path: str,
        budget: float,
        data: dict[str, str] | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        timeout = httpx.Timeout(budget, connect=min(budget, CONNECT_TIMEOUT_SECONDS))
        try:
            return self._client.request(
                method, self._base + path, data=data, params=params, headers=headers, timeout=timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PaymentNotSent(f"{method} {path}: provider unreachable ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise PaymentOutcomeUnknown(f"{method} {path}: no answer within {budget:.1f}s", timed_out=True) from exc
        except httpx.TransportError as exc:
            raise PaymentOutcomeUnknown(f"{method} {path}: answer lost ({type(exc).__name__})") from exc


def _rate_limit_wait(response: httpx.Response, retries: int) -> float | None:
    """How long to wait before retrying a 429, or None when Stripe says a retry cannot succeed."""
    # docs.stripe.com/error-low-level#stripe-should-retry: "false" means the same request will fail again.
    if response.headers.get("Stripe-Should-Retry", "").lower() == "false":
        return None
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    delay: float = min(RATE_LIMIT_BACKOFF_SECONDS * 2.0**retries, RATE_LIMIT_BACKOFF_MAX_SECONDS)
    jitter: float = random.random()  # noqa: S311 - jitter, not a secret
    return delay * (0.5 + jitter / 2)


def _list_data(body: dict[str, Any]) -> list[Any]:
    data = body.get("data")
    return data if isinstance(data, list) else []


def _intent(body: Any) -> Intent:
    try:
        return Intent.model_validate(body)
    except ValidationError as exc:
        # A success we cannot read may still have done something: the caller reads back.
        raise PaymentOutcomeUnknown(f"unreadable PaymentIntent in the answer: {exc.errors()[:1]}") from exc


def _refund(body: Any) -> Refund:
    try:
        return Refund.model_validate(body)
    except ValidationError as exc:
        raise PaymentOutcomeUnknown(f"unreadable Refund in the answer: {exc.errors()[:1]}") from exc


def _sort_answer(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    if response.is_success:
        if not body:
            raise PaymentOutcomeUnknown(f"{method} {path}: {response.status_code} with an unreadable body")
        return body
    raw_error = body.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    message = f"{method} {path}: {response.status_code} {code or error_type or ''}".strip()
    if error.get("message"):
        message += f": {error['message']}"
    intent = _error_intent(error.get("payment_intent"))
    status = response.status_code
    if status == 402 or error_type == "card_error":
        raise PaymentDeclined(message, intent=intent, decline_code=error.get("decline_code") or code)
    if code == "payment_intent_unexpected_state":
        raise PaymentUnexpectedState(message, intent=intent)
    if status == 409:
        # idempotency_key_in_use: the first request under this key is still running; nothing is stored.
        raise PaymentInProgress(message)
    if status == 424 or status >= 500:
        # docs.stripe.com/api/errors: 424 (an external dependency failed) and 5xx leave the outcome unknown.
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        raise PaymentOutcomeUnknown(message, answered=True, replayed=replayed)
    param = error.get("param") if isinstance(error.get("param"), str) else None
    raise PaymentRejected(message, status=status, code=code, param=param)


def _error_intent(raw: Any) -> Intent | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Intent.model_validate(raw)
    except ValidationError:
        return None
