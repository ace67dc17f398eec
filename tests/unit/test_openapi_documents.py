"""The committed OpenAPI documents are valid OpenAPI 3.1 and say what the code enforces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from checkout.currencies import ISO_4217

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DOCS / name).read_text())
    return loaded


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


@pytest.mark.parametrize("name", ["openapi.json", "admin-openapi.json"])
def test_document_is_valid_openapi_3_1(name: str) -> None:
    doc = document(name)

    OpenAPIV31SpecValidator(doc).validate()
    assert doc["openapi"].startswith("3.1")


@pytest.mark.parametrize("name", ["openapi.json", "admin-openapi.json"])
def test_every_answer_has_a_json_body_and_every_error_is_error_and_message(name: str) -> None:
    doc = document(name)
    schemas = doc["components"]["schemas"]

    for method, path, op in operations(doc):
        assert {"400", "413", "415", "422", "500"} <= set(op["responses"]), f"{method} {path}"
        for status, response in op["responses"].items():
            schema = response["content"]["application/json"]["schema"]
            if int(status) < 400:
                continue
            refs = [o["$ref"] for o in schemas[schema["$ref"].rsplit("/", 1)[1]].get("oneOf", [schema])]
            for ref in refs:
                error = schemas[ref.rsplit("/", 1)[1]]
                assert {"error", "message"} <= set(error["required"]), f"{method} {path} {status}"
                assert "const" in error["properties"]["error"], f"{method} {path} {status} names its code"


def test_session_request_states_the_validation() -> None:
    schemas = document("openapi.json")["components"]["schemas"]
    session, item = schemas["CreateSessionRequest"], schemas["LineItemIn"]

    assert set(session["properties"]["currency"]["enum"]) == ISO_4217
    assert session["additionalProperties"] is False
    quantity = item["properties"]["quantity"]
    assert (quantity["type"], quantity["minimum"], quantity["maximum"]) == ("integer", 1, 1000)
    assert item["properties"]["unit_amount"]["maximum"] == 99_999_999
    assert item["properties"]["sku"]["pattern"] == session["properties"]["customer_id"]["pattern"] == r"^[\x21-\x7E]+$"


def test_confirm_declares_each_of_its_answers() -> None:
    confirm = document("openapi.json")["paths"]["/checkout/confirm"]["post"]

    assert set(confirm["responses"]) >= {"200", "201", "202", "402", "404", "409", "502", "503", "504"}
    headers = {p["name"]: p for p in confirm["parameters"] if p["in"] == "header"}
    assert headers["x-session-id"]["required"] is True
    assert headers["x-session-id"]["schema"]["pattern"] == "^[A-Za-z0-9_-]+$"
    assert headers["idempotency-key"]["schema"]["maxLength"] == 255
