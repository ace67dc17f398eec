"""The admin API (/admin/*, IAM auth) over real API Gateway v2 events: every route, its errors, and what it writes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ApiResponse, Clock
from tests.integration.conftest import OPERATOR_ARN, FailedOrder, message_for, order_row, record_of, void_by_hand
from tests.integration.test_bad_input import assert_refused
from tests.invariants import assert_money_invariants, scan
from tests.sqs import EventSourceMapping, queue_depth

Admin = Callable[..., ApiResponse]
FailCompensation = Callable[..., FailedOrder]


@pytest.fixture
def nothing_written(stack, stripe, warehouse) -> Iterator[None]:
    """Snapshots both tables, the queue and the providers; afterwards nothing may have changed."""
    before = {t: scan(stack, t) for t in ("OrdersTable", "FailedCompensationsTable")}
    depth = queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"])
    stripe_requests, warehouse_requests = len(stripe.requests), len(warehouse.requests)
    yield
    assert {t: scan(stack, t) for t in before} == before
    assert queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"]) == depth
    assert len(stripe.requests) == stripe_requests
    assert len(warehouse.requests) == warehouse_requests


# --- list ------------------------------------------------------------------------------------------


def test_list_pages_through_one_status_oldest_first(admin: Admin, fail_compensation: FailCompensation, clock: Clock):
    # Given three pending failed compensations, made a minute apart
    made = []
    for n in range(3):
        made.append(fail_compensation(f"cus_{n}").compensation_id)
        clock.advance(60)

    # When the operator lists pending records two at a time
    first = admin("GET", "/admin/compensations", query={"status": "pending", "limit": "2"})
    second = admin(
        "GET", "/admin/compensations", query={"status": "pending", "limit": "2", "cursor": first.body["next_cursor"]}
    )

    # Then the pages hold every record once, oldest first, and the last page says there is no more
    assert first.status == 200
    assert [r["id"] for r in first.body["items"]] == made[:2]
    assert first.body["next_cursor"]
    assert second.status == 200
    assert [r["id"] for r in second.body["items"]] == made[2:]
    assert second.body["next_cursor"] is None
    record = first.body["items"][0]
    assert set(record) >= {
        "id", "order_id", "operation_type", "authorization_id", "error_message", "retry_count", "max_retries",
        "status", "alert_sent", "created_at", "updated_at", "resolved_at",
    }  # fmt: skip
    assert "lease_owner" not in record


def test_list_without_a_status_shows_failed_first_then_the_rest(
    admin: Admin, fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe
):
    # Given one record whose retries ran out, then one pending and one resolved
    exhausted = fail_compensation("cus_1")
    stripe.inject("cancel", status=500)
    dlq_processor.drain()
    stripe.clear_faults()
    pending = fail_compensation("cus_2")
    resolved = fail_compensation("cus_3")
    admin("POST", f"/admin/compensations/{resolved.compensation_id}/resolve", body={"note": "voided in dashboard"})

    # When the operator lists everything, one record per page
    seen, cursor = [], None
    for _ in range(5):
        query = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = admin("GET", "/admin/compensations", query=query)
        assert page.status == 200
        seen += [(r["id"], r["status"]) for r in page.body["items"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break

    # Then what needs a person comes first, and every record appears exactly once
    assert seen == [
        (exhausted.compensation_id, "failed"),
        (pending.compensation_id, "pending"),
        (resolved.compensation_id, "resolved"),
    ]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"status": "lost"}, id="unknown-status"),
        pytest.param({"limit": "0"}, id="limit-zero"),
        pytest.param({"limit": "101"}, id="limit-too-big"),
        pytest.param({"limit": "ten"}, id="limit-not-a-number"),
        pytest.param({"cursor": "not-a-cursor"}, id="garbage-cursor"),
        pytest.param({"cursor": "eyJzdGF0dXMiOiAicmVzb2x2ZWQifQ", "status": "failed"}, id="cursor-of-another-filter"),
    ],
)
def test_list_with_bad_parameters_is_422(admin: Admin, query: dict[str, str], nothing_written: None) -> None:
    response = admin("GET", "/admin/compensations", query=query)

    assert_refused(response, 422, "validation_error")


# --- get -------------------------------------------------------------------------------------------


def test_get_shows_the_record(admin: Admin, fail_compensation: FailCompensation) -> None:
    failed = fail_compensation()

    response = admin("GET", f"/admin/compensations/{failed.compensation_id}")

    assert response.status == 200
    assert response.body["id"] == failed.compensation_id
    assert response.body["order_id"] == failed.order_id
    assert response.body["authorization_id"] == failed.authorization_id
    assert response.body["operation_type"] == "void_authorization"
    assert response.body["status"] == "pending"
    assert response.body["alert_sent"] is True


def test_get_of_an_unknown_record_is_404(admin: Admin, nothing_written: None) -> None:
    response = admin("GET", "/admin/compensations/fc_nope")

    assert_refused(response, 404, "compensation_not_found")


# --- retry -----------------------------------------------------------------------------------------


def test_retry_requeues_the_record_and_records_who_asked(
    admin: Admin,
    fail_compensation: FailCompensation,
    dlq_processor: EventSourceMapping,
    stack,
    stripe,
    warehouse,
    alerts_inbox,
) -> None:
    # Given a record whose automatic retries ran out while the provider was down
    failed = fail_compensation()
    stripe.inject("cancel", status=500)
    dlq_processor.drain()
    assert record_of(stack, failed.compensation_id)["status"] == "failed"
    stripe.clear_faults()

    # When the operator retries it
    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/retry", body={"note": "Stripe is back"})

    # Then it is accepted and queued again, the action is on the record, and the processor resolves it
    assert response.status == 202
    assert response.body["status"] == "pending"
    [action] = response.body["actions"]
    assert action["action"] == "retry"
    assert action["by"] == OPERATOR_ARN
    assert action["note"] == "Stripe is back"
    assert action["at"]
    assert queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"]) == 1
    delivery = dlq_processor.deliver()
    assert delivery.bodies == [message_for(failed.compensation_id)]
    assert delivery.failed == []
    assert record_of(stack, failed.compensation_id)["status"] == "resolved"
    assert order_row(stack, failed.order_id)["saga_state"] == "COMPENSATED"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_retry_without_a_body_is_accepted(admin: Admin, fail_compensation: FailCompensation) -> None:
    failed = fail_compensation()

    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/retry")

    assert response.status == 202
    assert "note" not in response.body["actions"][0]


def test_retry_of_an_unknown_record_is_404(admin: Admin, nothing_written: None) -> None:
    assert_refused(admin("POST", "/admin/compensations/fc_nope/retry"), 404, "compensation_not_found")


def test_retry_of_a_resolved_record_is_409(admin: Admin, fail_compensation: FailCompensation, stack) -> None:
    failed = fail_compensation()
    admin("POST", f"/admin/compensations/{failed.compensation_id}/resolve", body={"note": "voided by hand"})
    before = record_of(stack, failed.compensation_id)
    depth = queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"])

    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/retry")

    assert_refused(response, 409, "compensation_resolved")
    assert record_of(stack, failed.compensation_id) == before
    assert queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"]) == depth


# --- resolve ---------------------------------------------------------------------------------------


def test_resolve_by_hand_closes_the_record_and_compensates_the_order(
    admin: Admin, fail_compensation: FailCompensation, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a failed void, which the operator then cancels in the Stripe dashboard
    failed = fail_compensation()
    void_by_hand(stripe, failed.authorization_id)

    # When they resolve the record with a note
    note = "cancelled pi in the Stripe dashboard, ticket OPS-42"
    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/resolve", body={"note": note})

    # Then the record is resolved by them, with the note, and the order is COMPENSATED
    assert response.status == 200
    assert response.body["status"] == "resolved"
    assert response.body["resolved_at"]
    assert response.body["resolved_by"] == OPERATOR_ARN
    [action] = response.body["actions"]
    assert (action["action"], action["by"], action["note"]) == ("resolve", OPERATOR_ARN, note)
    order = admin("GET", f"/admin/orders/{failed.order_id}").body
    assert order["saga_state"] == "COMPENSATED"
    assert order["status"] == "cancelled"
    last = order["history"][-1]
    assert (last["from"], last["to"]) == ("COMPENSATION_FAILED", "COMPENSATED")
    assert note in last["reason"]
    assert OPERATOR_ARN in last["reason"]
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        pytest.param(None, None, id="no-body"),
        pytest.param({}, None, id="no-note"),
        pytest.param({"note": ""}, None, id="empty-note"),
        pytest.param({"note": "   "}, None, id="blank-note"),
        pytest.param({"note": "x" * 2001}, None, id="note-too-long"),
        pytest.param({"note": "ok", "force": True}, None, id="unknown-field"),
        pytest.param(None, "{not json", id="not-json"),
        pytest.param({"note": 42}, None, id="note-not-a-string"),
    ],
)
def test_resolve_without_a_proper_note_is_422_and_writes_nothing(
    admin: Admin, fail_compensation: FailCompensation, body, raw, request: pytest.FixtureRequest
) -> None:
    failed = fail_compensation()
    request.getfixturevalue("nothing_written")

    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/resolve", body=body, raw_body=raw)

    assert_refused(response, 422, "validation_error")


def test_resolve_of_an_unknown_record_is_404(admin: Admin, nothing_written: None) -> None:
    response = admin("POST", "/admin/compensations/fc_nope/resolve", body={"note": "done"})

    assert_refused(response, 404, "compensation_not_found")


def test_resolving_twice_is_409_and_keeps_the_first_resolution(
    admin: Admin, fail_compensation: FailCompensation, stack
) -> None:
    failed = fail_compensation()
    admin("POST", f"/admin/compensations/{failed.compensation_id}/resolve", body={"note": "first"})
    before = record_of(stack, failed.compensation_id)

    response = admin("POST", f"/admin/compensations/{failed.compensation_id}/resolve", body={"note": "second"})

    assert_refused(response, 409, "compensation_resolved")
    assert record_of(stack, failed.compensation_id) == before


def test_a_body_over_64_kib_is_413(admin: Admin, nothing_written: None) -> None:
    response = admin("POST", "/admin/compensations/fc_x/resolve", raw_body=json.dumps({"note": "x" * 70_000}))

    assert_refused(response, 413, "payload_too_large")


# --- orders ----------------------------------------------------------------------------------------


def test_get_order_shows_its_history_and_its_failed_compensations(
    admin: Admin, fail_compensation: FailCompensation
) -> None:
    failed = fail_compensation()

    response = admin("GET", f"/admin/orders/{failed.order_id}")

    assert response.status == 200
    assert response.body["order_id"] == failed.order_id
    assert response.body["saga_state"] == "COMPENSATION_FAILED"
    assert response.body["customer_id"] == failed.customer_id
    assert [h["to"] for h in response.body["history"]] == ["AUTHORIZING", "COMPENSATING", "COMPENSATION_FAILED"]
    assert [r["id"] for r in response.body["compensations"]] == [failed.compensation_id]
    assert "lease_owner" not in response.body


def test_get_of_an_unknown_order_is_404(admin: Admin, nothing_written: None) -> None:
    assert_refused(admin("GET", "/admin/orders/ord_nope"), 404, "order_not_found")


# --- IAM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/compensations", None),
        ("GET", "/admin/compensations/{id}", None),
        ("POST", "/admin/compensations/{id}/retry", None),
        ("POST", "/admin/compensations/{id}/resolve", {"note": "done"}),
        ("GET", "/admin/orders/{order}", None),
    ],
)
def test_a_request_without_an_iam_caller_is_refused_and_writes_nothing(
    admin: Admin, fail_compensation: FailCompensation, method: str, path: str, body, request: pytest.FixtureRequest
) -> None:
    # Given a route the template IAM-authorizes, reached without an IAM identity (a misconfigured route)
    failed = fail_compensation()
    request.getfixturevalue("nothing_written")

    response = admin(method, path.format(id=failed.compensation_id, order=failed.order_id), body=body, iam=False)

    assert_refused(response, 403, "forbidden")


def test_the_committed_sample_event_lists_failed_compensations(runtime, nothing_written: None) -> None:
    from pathlib import Path

    from functions.admin.app import lambda_handler
    from tests.conftest import LambdaContext

    event = json.loads((Path(__file__).parents[2] / "events" / "admin_list_compensations.json").read_text())

    result = lambda_handler(event, LambdaContext(function_name="checkout-local-admin"))

    assert result["statusCode"] == 200
    assert json.loads(result["body"]) == {"items": [], "next_cursor": None}
