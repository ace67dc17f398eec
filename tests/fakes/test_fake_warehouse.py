"""Behaviour of the fake warehouse reservations provider and the fakes' control endpoints, over real HTTP."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from local.fake_warehouse import DEFAULT_STOCK, FakeWarehouse


@pytest.fixture
def warehouse() -> Iterator[FakeWarehouse]:
    with FakeWarehouse() as fake:
        yield fake


@pytest.fixture
def client(warehouse: FakeWarehouse) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=warehouse.url, timeout=5) as http:
        yield http


def reserve(
    client: httpx.Client, reference: str = "order-1", items: Any = None, *, key: str | None = None
) -> httpx.Response:
    body = {"reference": reference, "items": items if items is not None else [{"sku": "SKU-1", "quantity": 2}]}
    return client.post("/v1/reservations", json=body, headers={"Idempotency-Key": key} if key else {})


# ---- reservations --------------------------------------------------------------------------------


def test_reserving_holds_stock_for_an_hour(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    warehouse.set_stock("SKU-1", 5)

    # When
    response = reserve(client, "order-1", [{"sku": "SKU-1", "quantity": 2}], key="k-1")

    # Then
    assert response.status_code == 201
    reservation = response.json()
    assert reservation["id"].startswith("res_")
    assert reservation["status"] == "held"
    assert reservation["reference"] == "order-1"
    assert reservation["items"] == [{"sku": "SKU-1", "quantity": 2}]
    expires_at = datetime.fromisoformat(reservation["expires_at"])
    assert expires_at.tzinfo is not None
    assert abs(expires_at - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(minutes=1)
    assert warehouse.stock("SKU-1") == 3
    [event] = warehouse.ledger
    assert (event["op"], event["id"], event["reference"], event["idempotency_key"]) == (
        "reserved",
        reservation["id"],
        "order-1",
        "k-1",
    )


def test_a_sku_never_stocked_has_the_default_stock(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # When
    response = reserve(client, items=[{"sku": "ANYTHING", "quantity": 10}])

    # Then
    assert response.status_code == 201
    assert warehouse.stock("ANYTHING") == DEFAULT_STOCK - 10


def test_a_short_sku_is_409_out_of_stock_and_nothing_is_reserved(
    client: httpx.Client, warehouse: FakeWarehouse
) -> None:
    # Given
    warehouse.set_stock("SKU-1", 5)
    warehouse.set_stock("SKU-2", 1)

    # When
    response = reserve(client, items=[{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-2", "quantity": 3}])

    # Then
    assert response.status_code == 409
    body = response.json()
    assert (body["error"], body["sku"]) == ("out_of_stock", "SKU-2")
    assert body["message"]
    assert (warehouse.stock("SKU-1"), warehouse.stock("SKU-2")) == (5, 1)
    assert warehouse.reservations == {}
    assert warehouse.ledger == []


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"sku": "SKU-1", "quantity": 1}]},
        {"reference": "order-1", "items": []},
        {"reference": "order-1", "items": [{"sku": "SKU-1", "quantity": 0}]},
        {"reference": "order-1", "items": [{"sku": "", "quantity": 1}]},
        {"reference": "order-1", "items": [{"sku": "SKU-1", "quantity": "1"}]},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_reservation_is_422(client: httpx.Client, warehouse: FakeWarehouse, body: Any) -> None:
    # When
    response = client.post("/v1/reservations", json=body)

    # Then
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert warehouse.ledger == []


def test_release_gives_the_stock_back_once_however_often_it_is_called(
    client: httpx.Client, warehouse: FakeWarehouse
) -> None:
    # Given
    warehouse.set_stock("SKU-1", 5)
    reservation_id = reserve(client).json()["id"]

    # When
    first = client.post(f"/v1/reservations/{reservation_id}/release", headers={"Idempotency-Key": "r-1"})
    second = client.post(f"/v1/reservations/{reservation_id}/release", headers={"Idempotency-Key": "r-2"})

    # Then
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["id"] == reservation_id
    assert first.json()["status"] == second.json()["status"] == "released"
    assert warehouse.stock("SKU-1") == 5
    assert warehouse.count("released", reference="order-1") == 1
    assert client.get(f"/v1/reservations/{reservation_id}").json()["status"] == "released"


def test_an_unknown_reservation_is_404(client: httpx.Client) -> None:
    # When
    responses = [client.get("/v1/reservations/res_nope"), client.post("/v1/reservations/res_nope/release")]

    # Then
    assert [r.status_code for r in responses] == [404, 404]
    assert {r.json()["error"] for r in responses} == {"not_found"}


# ---- idempotency and faults ----------------------------------------------------------------------


def test_same_key_and_body_replay_the_reservation(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    first = reserve(client, key="k-1")

    # When
    second = reserve(client, key="k-1")

    # Then
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert warehouse.count("reserved") == 1


def test_same_key_with_another_body_is_400(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    reserve(client, "order-1", key="k-1")

    # When
    response = reserve(client, "order-2", key="k-1")

    # Then
    assert response.status_code == 400
    assert response.json()["error"] == "idempotency_error"
    assert warehouse.count("reserved") == 1


def test_an_out_of_stock_answer_is_replayed_under_its_key(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    warehouse.set_stock("SKU-1", 1)
    first = reserve(client, key="k-1")
    warehouse.set_stock("SKU-1", 100)

    # When
    replay = reserve(client, key="k-1")

    # Then
    assert (first.status_code, replay.status_code) == (409, 409)
    assert replay.json() == first.json()


def test_a_lost_reservation_response_still_holds_stock_and_the_retry_replays_it(
    client: httpx.Client, warehouse: FakeWarehouse
) -> None:
    # Given
    warehouse.set_stock("SKU-1", 5)
    warehouse.inject("reserve", lose_response=True)

    # When
    with pytest.raises(httpx.RemoteProtocolError):
        reserve(client, key="k-1")
    retry = reserve(client, key="k-1")

    # Then
    assert retry.status_code == 201
    assert retry.json()["id"] == warehouse.ledger[0]["id"]
    assert warehouse.stock("SKU-1") == 3
    assert warehouse.count("reserved") == 1


def test_an_injected_status_answers_the_warehouse_error_shape_without_reserving(
    client: httpx.Client, warehouse: FakeWarehouse
) -> None:
    # Given
    warehouse.inject("reserve", status=503, times=1)

    # When
    failed = reserve(client)
    succeeded = reserve(client)

    # Then
    assert failed.status_code == 503
    assert failed.json() == {"error": "service_unavailable", "message": "Injected fault: HTTP 503."}
    assert succeeded.status_code == 201
    assert warehouse.count("reserved") == 1


def test_a_delay_slows_the_call_then_it_proceeds(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    warehouse.inject("get", delay=0.2)
    reservation_id = reserve(client).json()["id"]

    # When / Then
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v1/reservations/{reservation_id}", timeout=0.05)
    assert client.get(f"/v1/reservations/{reservation_id}").status_code == 200


# ---- control endpoints ---------------------------------------------------------------------------


def test_faults_are_set_listed_and_cleared_over_http(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # When
    injected = client.post("/_faults", json={"operation": "release", "status": 500, "times": 3})
    listed = client.get("/_faults")
    cleared = client.delete("/_faults")

    # Then
    assert injected.status_code == 200
    expected = {"status": 500, "delay": 0.0, "decline": False, "lose_response": False, "times": 3}
    assert injected.json() == {"faults": {"release": expected}}
    assert listed.json() == injected.json()
    assert cleared.json() == {"faults": {}}
    assert warehouse.faults == {}


@pytest.mark.parametrize(
    "spec",
    [
        {"operation": "teleport", "status": 500},
        {"status": 500},
        {"operation": "reserve", "decline": True},
        {"operation": "reserve", "explode": True},
    ],
)
def test_an_invalid_fault_is_400(client: httpx.Client, warehouse: FakeWarehouse, spec: dict[str, Any]) -> None:
    # When
    response = client.post("/_faults", json=spec)

    # Then
    assert response.status_code == 400
    assert warehouse.faults == {}


def test_the_ledger_endpoint_shows_state_changes_and_requests(client: httpx.Client) -> None:
    # Given
    reservation_id = reserve(client, key="k-1").json()["id"]
    reserve(client, key="k-1")
    client.post(f"/v1/reservations/{reservation_id}/release")

    # When
    response = client.get("/_ledger")

    # Then
    assert response.status_code == 200
    body = response.json()
    assert [(e["op"], e["id"]) for e in body["ledger"]] == [("reserved", reservation_id), ("released", reservation_id)]
    assert [(r["operation"], r["status"], r["replayed"]) for r in body["requests"]] == [
        ("reserve", 201, False),
        ("reserve", 201, True),
        ("release", 200, False),
    ]


def test_reset_forgets_state_faults_keys_and_ledger(client: httpx.Client, warehouse: FakeWarehouse) -> None:
    # Given
    warehouse.set_stock("SKU-1", 5)
    reservation_id = reserve(client, key="k-1").json()["id"]
    warehouse.inject("get", status=500)

    # When
    response = client.post("/_reset")

    # Then
    assert response.status_code == 200
    assert (warehouse.reservations, warehouse.ledger, warehouse.requests, warehouse.faults) == ({}, [], [], {})
    assert warehouse.stock("SKU-1") == DEFAULT_STOCK
    assert client.get(f"/v1/reservations/{reservation_id}").status_code == 404
    assert reserve(client, key="k-1").headers.get("Idempotent-Replayed") is None
