"""Domain errors that reach a client, each with its HTTP status and error code (section 5)."""

from __future__ import annotations

from typing import Any


class CheckoutError(Exception):
    status = 400
    code = "bad_request"

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


class SessionNotFound(CheckoutError):
    status, code = 404, "session_not_found"


class OrderNotFound(CheckoutError):
    status, code = 404, "order_not_found"


class OutOfStockError(CheckoutError):
    status, code = 409, "out_of_stock"


class WarehouseUnavailableError(CheckoutError):
    status, code = 503, "warehouse_unavailable"


class WarehouseTimeoutError(WarehouseUnavailableError):
    status = 504


class ConfirmInProgress(CheckoutError):
    status, code = 409, "confirm_in_progress"


class SessionClosed(CheckoutError):
    status, code = 409, "session_closed"


class PaymentDeclinedError(CheckoutError):
    status, code = 402, "payment_declined"


class PaymentUnavailable(CheckoutError):
    status, code = 503, "payment_unavailable"


class PaymentOutcomeUnknownError(CheckoutError):
    status, code = 502, "payment_outcome_unknown"


class PaymentTimeout(CheckoutError):
    status, code = 504, "payment_timeout"


class OrderNotRecorded(CheckoutError):
    """The payment was authorized but the order could not be recorded; the hold is being voided."""

    status, code = 503, "order_not_recorded"
