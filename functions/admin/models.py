"""Request bodies of the admin API, validated by the resolver (they also shape docs/admin-openapi.json)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from checkout.operator_actions import MAX_NOTE_LENGTH


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
