"""Request bodies of the HTTP APIs (checkout, admin), validated by the resolvers; they also shape docs/*openapi.json."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from checkout.currencies import ISO_4217


class LineItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000, description="units, at least 1")
    unit_amount: int = Field(ge=0, le=100_000_000, description="price per unit in minor units")


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128)
    currency: str = Field(description="lowercase ISO 4217 code, e.g. usd")
    items: list[LineItemIn] = Field(min_length=1, max_length=100)
    payment_method: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"{value!r} is not a lowercase ISO 4217 currency code")
        return value

    @model_validator(mode="after")
    def _positive_total(self) -> CreateSessionRequest:
        if sum(i.quantity * i.unit_amount for i in self.items) <= 0:
            raise ValueError("the cart's total must be above zero")
        return self


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_method: str | None = Field(default=None, min_length=1, max_length=255)


# Admin API (operators) --------------------------------------------------------------------------
MAX_NOTE_LENGTH = 2000


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(
        min_length=1,
        max_length=MAX_NOTE_LENGTH,
        description="what was done at the provider or warehouse to settle it (kept on the record)",
    )

    @field_validator("note")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must say what was done, it cannot be blank")
        return value.strip()


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(
        default=None, min_length=1, max_length=MAX_NOTE_LENGTH, description="why it is retried (kept on the record)"
    )


class RedriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_per_second: int | None = Field(
        default=None, ge=1, le=500, description="redrive velocity in messages per second (default: system optimized)"
    )


class ErrorBody(BaseModel):
    """Every error answer of both APIs (section 5)."""

    error: str = Field(description="machine-readable code, e.g. compensation_not_found")
    message: str = Field(description="what went wrong, for a person")
