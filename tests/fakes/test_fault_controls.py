"""The fakes' POST /_faults as a load test and an operator use it: per-request fault mixes, and numbers that are
not finite or out of range refused with a 422 that applies nothing (the fake keeps answering afterwards)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from local.fake_warehouse import FakeWarehouse


@pytest.fixture
def warehouse() -> Iterator[FakeWarehouse]:
    with FakeWarehouse() as fake:
        yield fake


@pytest.fixture
def client(warehouse: FakeWarehouse) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=warehouse.url, timeout=10) as http:
        yield http


def reserve(client: httpx.Client, reference: str) -> httpx.Response:
    body = {"reference": reference, "items": [{"sku": "SKU-1", "quantity": 1}]}
    return client.post("/v1/reservations", json=body, headers={"Idempotency-Key": reference})


@pytest.mark.parametrize(
    "body",
    [
        '{"operation": "reserve", "delay": NaN}',
        '{"operation": "reserve", "delay": Infinity}',
        '{"operation": "reserve", "delay": -1}',
        '{"operation": "reserve", "delay": 1e9}',
        '{"operation": "reserve", "status": 200}',
        '{"operation": "reserve", "status": 500, "times": 0}',
        '{"operation": "reserve", "mix": [{"probability": NaN, "status": 500}]}',
        '{"operation": "reserve", "mix": [{"probability": 1.5, "status": 500}]}',
        '{"operation": "reserve", "mix": [{"probability": 0.6, "status": 500}, {"probability": 0.6, "status": 503}]}',
        '{"operation": "reserve", "mix": [{"probability": 0.1, "delay": Infinity}]}',
    ],
)
def test_a_number_not_finite_or_out_of_range_is_a_422_that_applies_nothing(
    client: httpx.Client, warehouse: FakeWarehouse, body: str
) -> None:
    # When
    response = client.post("/_faults", content=body, headers={"Content-Type": "application/json"})

    # Then the fault is refused in the fake's own error shape, nothing is set, and the fake still serves
    assert response.status_code == 422
    assert "invalid_fault" in response.text
    assert client.get("/_faults").json() == {"faults": {}}
    assert reserve(client, "after-refusal").status_code == 201


@pytest.mark.parametrize(
    "spec",
    [
        {"operation": "reserve", "mix": []},
        {"operation": "reserve", "mix": [{"probability": 0.1, "explode": True}]},
        {"operation": "reserve", "mix": [{"status": 500}]},
        {"operation": "reserve", "mix": [{"probability": 0.1, "status": 500}], "times": 3},
    ],
)
def test_a_malformed_mix_is_a_400(client: httpx.Client, spec: dict[str, Any]) -> None:
    response = client.post("/_faults", json=spec)

    assert response.status_code == 400
    assert client.get("/_faults").json() == {"faults": {}}


def test_a_mix_fails_about_its_share_of_calls_each_as_the_request_log_says(
    client: httpx.Client, warehouse: FakeWarehouse
) -> None:
    # Given a quarter of reservations answering 500 and a quarter 503, drawn per request from a fixed seed
    mix = [{"probability": 0.25, "status": 500}, {"probability": 0.25, "status": 503}]
    set_mix = client.post("/_faults", json={"operation": "reserve", "mix": mix, "seed": 7})

    # When 400 reservations are made
    statuses = Counter(reserve(client, f"order-{n}").status_code for n in range(400))

    # Then about half fail, split between the two statuses, and each failed call names its fault in the log
    assert set_mix.status_code == 200
    assert set_mix.json()["mixes"]["reserve"][0]["probability"] == 0.25
    assert 70 <= statuses[500] <= 130
    assert 70 <= statuses[503] <= 130
    assert statuses[201] == 400 - statuses[500] - statuses[503]
    logged = Counter(r["fault"] for r in warehouse.requests)
    assert logged["status:500"] == statuses[500]
    assert logged["status:503"] == statuses[503]
    assert logged[None] == statuses[201]


def test_clearing_faults_ends_a_mix(client: httpx.Client) -> None:
    # Given every reservation failing
    client.post("/_faults", json={"operation": "reserve", "mix": [{"probability": 1, "status": 503}]})
    assert reserve(client, "during").status_code == 503

    # When the faults are cleared
    cleared = client.delete("/_faults")

    # Then nothing fails any more
    assert cleared.json() == {"faults": {}}
    assert reserve(client, "after").status_code == 201
