"""What the HTTP APIs (checkout, admin) take and answer: request bodies, validated strictly by the resolvers, and
the answers' shapes. Both shape docs/*openapi.json, so the documents say what the code enforces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    RootModel,
    Strict,
    create_model,
    field_validator,
    model_validator,
)

from checkout.currencies import ISO_4217, charge_problem
from checkout.failed_compensations import INTERNAL_FIELDS, FailedCompensation
from checkout.orders import Order
from checkout.saga import OrderStatus, SagaState

# Identifiers a client chooses (customer, SKU, payment method, idempotency key): printable ASCII without space
# (0x21-0x7E). They travel in headers and provider requests, so no control, non-ASCII or bidi characters.
TOKEN_PATTERN = r"^[\x21-\x7E]+$"  # noqa: S105 (a pattern, not a secret)
# Identifiers this system makes (cs_…, ord_…, fc_…) and takes back in headers and paths.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
MAX_ID_LENGTH = 128
MAX_TOKEN_LENGTH = 255
# Stripe takes amounts of at most 8 digits (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
MAX_UNIT_AMOUNT = 99_999_999
MAX_QUANTITY = 1000
MAX_ITEMS = 100

CustomerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=TOKEN_PATTERN,
        description="the customer: printable ASCII without spaces (0x21-0x7E), at most 128 characters",
        examples=["cus_1"],
    ),
]
PaymentMethod = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TOKEN_LENGTH,
        pattern=TOKEN_PATTERN,
        description="a payment method id (Stripe pm_…): printable ASCII without spaces, at most 255 characters",
        examples=["pm_card_visa"],
    ),
]


def _json_integer(value: object) -> int:
    """A JSON integer: a number with no fraction (JSON Schema counts 2.0 as the integer 2). Strings and booleans
    are refused, not coerced, as pydantic's lax mode would ("1" and true taken as 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer), Strict()]


class LineItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(
        min_length=1,
        max_length=64,
        pattern=TOKEN_PATTERN,
        description="printable ASCII without spaces, at most 64 characters",
        examples=["sku_mug"],
    )
    quantity: JsonInt = Field(ge=1, le=MAX_QUANTITY, description="units, 1 to 1000", examples=[2])
    unit_amount: JsonInt = Field(
        ge=0, le=MAX_UNIT_AMOUNT, description="price per unit in minor units (at most 8 digits)", examples=[1250]
    )


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_1",
                    "currency": "usd",
                    "items": [{"sku": "sku_mug", "quantity": 2, "unit_amount": 1250}],
                    "payment_method": "pm_card_visa",
                }
            ]
        },
    )

    customer_id: CustomerId
    currency: str = Field(
        description="lowercase ISO 4217 code, e.g. usd",
        # The list is documented; the validator below names the field in a short message instead of all codes.
        json_schema_extra={"enum": list[JsonValue](sorted(ISO_4217))},
    )
    items: list[LineItemIn] = Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description="at least one line with a price above zero: the cart's total must be above zero",
        json_schema_extra={"contains": {"type": "object", "properties": {"unit_amount": {"minimum": 1}}}},
    )
    payment_method: PaymentMethod | None = None

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"{value[:8]!r} is not a lowercase ISO 4217 currency code")
        return value

    @model_validator(mode="after")
    def _positive_total(self) -> CreateSessionRequest:
        total = sum(i.quantity * i.unit_amount for i in self.items)
        if total <= 0:
            raise ValueError("the cart's total must be above zero")
        # Stripe's per-currency minimum and 8-digit maximum: refused here, before any stock is reserved.
        problem = charge_problem(total, self.currency)
        if problem is not None:
            raise ValueError(f"items: {problem}")
        return self


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"payment_method": "pm_card_visa"}]})

    payment_method: PaymentMethod | None = None


# Admin API (operators) --------------------------------------------------------------------------
MAX_NOTE_LENGTH = 2000
# A note is text for people, shown in the console and logs: no control characters but tab and newlines, no
# bidi controls. The classes are written out, not \s or \S, because Python, Rust (pydantic) and ECMA-262
# (the document's readers) each count different characters as whitespace; with explicit classes all three
# accept exactly the same notes.
_NOTE_CHAR = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
# What a note is trimmed of: the blanks _VISIBLE_CHAR leaves out.
_BLANKS = "\t\n\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(map(chr, range(0x2000, 0x200B)))
_VISIBLE_CHAR = (
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
    r"\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
NOTE_PATTERN = f"^{_NOTE_CHAR}*{_VISIBLE_CHAR}{_NOTE_CHAR}*$"
OPTIONAL_NOTE_PATTERN = f"^{_NOTE_CHAR}+$"


class ResolveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "cancelled pi_123 in the Stripe dashboard"}]}
    )

    note: str = Field(
        min_length=1,
        max_length=MAX_NOTE_LENGTH,
        pattern=NOTE_PATTERN,
        description=(
            "what was done at the provider or warehouse to settle it (kept on the record): at least one visible"
            " character; no control characters but tab and newlines, no bidi controls"
        ),
    )

    @field_validator("note")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        return value.strip(_BLANKS)


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "provider is back"}]})

    note: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NOTE_LENGTH,
        pattern=OPTIONAL_NOTE_PATTERN,
        description="why it is retried (kept on the record); no control characters but tab and newlines",
    )


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Absent means system optimized; null is not a velocity (so the document's integer 1..500 is exactly it).
    max_per_second: JsonInt = Field(  # type: ignore[assignment]
        default=None,
        ge=1,
        le=500,
        description="redrive velocity in messages per second, 1 to 500 (absent: system optimized)",
    )


# Answers ------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error answer of both APIs (section 5); each code's model narrows `error` and adds its fields."""

    error: str = Field(description="machine-readable code, e.g. compensation_not_found")
    message: str = Field(description="what went wrong, for a person")


class JsonObject(RootModel[dict[str, Any]]):
    """A JSON object; the route's description names its fields."""


class LineItemOut(BaseModel):
    sku: str
    quantity: int
    unit_amount: int


class SessionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": "cs_0f3a9c2e5b7d4e1f8a6b2c3d4e5f6a7b",
                    "customer_id": "cus_1",
                    "currency": "usd",
                    "items": [{"sku": "sku_mug", "quantity": 2, "unit_amount": 1250}],
                    "amount_total": 2500,
                    "payment_method": "pm_card_visa",
                    "reservation_id": "res_8d1f2a3b",
                    "expires_at": "2026-12-01T16:30:00.000Z",
                    "status": "open",
                }
            ]
        }
    )

    session_id: str = Field(pattern=ID_PATTERN)
    customer_id: str
    currency: str
    items: list[LineItemOut]
    amount_total: int = Field(description="in minor units")
    payment_method: str | None
    reservation_id: str
    expires_at: str = Field(description="ISO 8601 UTC", json_schema_extra={"format": "date-time"})
    status: Literal["open"]


class ConfirmAnswer(BaseModel):
    """POST /checkout/confirm's success body; its status says how far the order got."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"order_id": "ord_1c2d3e4f", "status": "confirmed", "amount_total": 2500, "currency": "usd"}]
        }
    )

    order_id: str = Field(pattern=ID_PATTERN)
    status: OrderStatus
    amount_total: int
    currency: str


class Confirmed(ConfirmAnswer):
    status: Literal[OrderStatus.CONFIRMED]


class PaymentPending(ConfirmAnswer):
    """Authorized; the capture is retried by the worker (GET /orders/{order_id} shows when it is done)."""

    status: Literal[OrderStatus.PAYMENT_PENDING]


class RequiresAction(ConfirmAnswer):
    """The card needs 3-D Secure: the shop's page completes the challenge with Stripe.js
    `stripe.handleNextAction({clientSecret})` and calls confirm again."""

    status: Literal[OrderStatus.REQUIRES_ACTION]
    client_secret: str | None = Field(
        description="the PaymentIntent's client secret for Stripe.js handleNextAction (never stored by us)"
    )
    next_action: dict[str, JsonValue] | None = Field(
        description="Stripe's next_action (use_stripe_sdk or redirect_to_url), as Stripe gave it"
    )


class HistoryOut(BaseModel):
    at: str = Field(json_schema_extra={"format": "date-time"})
    from_: SagaState | None = Field(alias="from")
    to: SagaState
    reason: str


class OrderOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "ord_1c2d3e4f",
                    "session_id": "cs_0f3a9c2e",
                    "customer_id": "cus_1",
                    "status": "confirmed",
                    "saga_state": "CAPTURED",
                    "amount_total": 2500,
                    "currency": "usd",
                    "history": [
                        {"at": "2026-12-01T16:00:00.000Z", "from": None, "to": "AUTHORIZING", "reason": "confirm"}
                    ],
                }
            ]
        }
    )

    order_id: str
    session_id: str
    customer_id: str
    status: OrderStatus
    saga_state: SagaState
    amount_total: int
    currency: str
    history: list[HistoryOut]


def _public(model: type[BaseModel], name: str, *, hide: set[str], **more: Any) -> type[BaseModel]:
    """`model` as the API shows it: without the internal fields `hide`, with `more`; stays true as `model` grows."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items() if n not in hide}
    built: type[BaseModel] = create_model(name, __doc__=model.__doc__, **fields, **more)
    return built


_LEASE = {"lease_owner", "lease_until"}
CompensationRecordOut = _public(FailedCompensation, "CompensationRecord", hide=set(INTERNAL_FIELDS))


class CompensationPage(BaseModel):
    items: list[CompensationRecordOut]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


AdminOrderOut = _public(
    Order,
    "AdminOrder",
    hide=_LEASE,
    compensations=(list[CompensationRecordOut], Field(description="its failed-compensation records")),  # type: ignore[valid-type]
)


# What each pattern means, for the 422 message (pydantic would quote the regex).
PATTERN_MEANINGS = {
    TOKEN_PATTERN: "printable ASCII without spaces",
    ID_PATTERN: "letters, digits, _ and - only",
    NOTE_PATTERN: "text with at least one visible character and no control or bidi characters",
    OPTIONAL_NOTE_PATTERN: "text with no control or bidi characters",
}
