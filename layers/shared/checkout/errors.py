"""Domain errors that reach a client, each with its HTTP status and error code (section 5)."""

from __future__ import annotations

from typing import Any, ClassVar


class CheckoutError(Exception):
    status = 400
    code = "bad_request"
    # Fields the body carries besides error and message (name: what it is), for the OpenAPI documents.
    fields: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = {k: v for k, v in extra.items() if v is not None}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ValidationFailed(CheckoutError):
    status, code = 422, "validation_error"


class PayloadTooLarge(CheckoutError):
    status, code = 413, "payload_too_large"


class InvalidBody(CheckoutError):
    """The body's bytes are not UTF-8 text, so it cannot be JSON."""

    status, code = 400, "invalid_body"


class UnsupportedMediaType(CheckoutError):
    status, code = 415, "unsupported_media_type"


class RouteNotFound(CheckoutError):
    status, code = 404, "not_found"


class MethodNotAllowed(CheckoutError):
    status, code = 405, "method_not_allowed"


class InternalError(CheckoutError):
    status, code = 500, "internal_error"


_ORDER_ID = {"order_id": "the order this answer is about"}


class SessionNotFound(CheckoutError):
    status, code = 404, "session_not_found"


class OrderNotFound(CheckoutError):
    status, code = 404, "order_not_found"


class OutOfStockError(CheckoutError):
    status, code = 409, "out_of_stock"
    fields: ClassVar[dict[str, str]] = {"sku": "the SKU the warehouse has too few of"}


class WarehouseUnavailableError(CheckoutError):
    status, code = 503, "warehouse_unavailable"


class WarehouseTimeoutError(WarehouseUnavailableError):
    status = 504


class ConfirmInProgress(CheckoutError):
    status, code = 409, "confirm_in_progress"
    fields: ClassVar[dict[str, str]] = _ORDER_ID


class SessionClosed(CheckoutError):
    status, code = 409, "session_closed"
    fields: ClassVar[dict[str, str]] = _ORDER_ID


class PaymentDeclinedError(CheckoutError):
    status, code = 402, "payment_declined"
    fields: ClassVar[dict[str, str]] = _ORDER_ID


class PaymentUnavailable(CheckoutError):
    status, code = 503, "payment_unavailable"


class PaymentOutcomeUnknownError(CheckoutError):
    status, code = 502, "payment_outcome_unknown"
    fields: ClassVar[dict[str, str]] = _ORDER_ID


class PaymentTimeout(CheckoutError):
    status, code = 504, "payment_timeout"
    fields: ClassVar[dict[str, str]] = _ORDER_ID


class OrderNotRecorded(CheckoutError):
    """The payment was authorized but the order could not be recorded; the hold is being voided."""

    status, code = 503, "order_not_recorded"
    fields: ClassVar[dict[str, str]] = _ORDER_ID
