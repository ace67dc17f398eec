"""The admin routes the operator console reads: provider state of a record, counts, the DLQ and its redrive, KPIs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import boto3
import pytest

from checkout.runtime import Runtime
from tests.aws_faults import AwsFaults
from tests.conftest import ApiResponse, Clock
from tests.integration.conftest import FailedOrder, message_for, void_by_hand
from tests.sqs import EventSourceMapping, queue_depth

Admin = Callable[..., ApiResponse]
FailCompensation = Callable[..., FailedOrder]


@pytest.fixture
def console_runtime(make_runtime: Callable[..., Runtime], env: dict[str, str], stack) -> Runtime:
    """The admin function's runtime: the template gives it the DLQ's URL (FAILED_COMPENSATIONS_DLQ_URL)."""
    env["FAILED_COMPENSATIONS_DLQ_URL"] = stack.environment("AdminFunction")["FAILED_COMPENSATIONS_DLQ_URL"]
    return make_runtime()


# --- provider state ---------------------------------------------------------------------------------


def test_provider_state_shows_the_held_intent_with_its_capture_deadline_and_allows_a_retry(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime, clock: Clock
) -> None:
    # Given a void that failed: Stripe still holds the authorization, the warehouse released the stock
    failed = fail_compensation("cus_1")

    # When the operator reads what the providers show for the record
    answer = admin("GET", f"/admin/compensations/{failed.compensation_id}/provider-state")

    # Then the intent is still requires_capture, with Stripe's capture_before about 7 days ahead, and retry helps
    assert answer.status == 200, answer.body
    intent = answer.body["payment"]["intent"]
    assert intent["id"] == failed.authorization_id
    assert intent["status"] == "requires_capture"
    deadline = datetime.fromisoformat(intent["capture_before"]).timestamp()
    assert 6.9 * 86400 < deadline - clock() <= 7 * 86400
    assert 6.9 * 86400 < intent["capture_seconds_left"] <= 7 * 86400
    assert answer.body["steps"] == [
        {"step": "void_authorization", "state": "to_do", "detail": answer.body["steps"][0]["detail"]}
    ]
    assert answer.body["retry"] == {"allowed": True, "reason": None}
    assert answer.body["reservation"]["reservation"]["id"] == failed.reservation_id


def test_provider_state_disables_retry_once_stripe_shows_the_void_done(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime, stripe
) -> None:
    # Given the operator cancelled the intent in the Stripe dashboard
    failed = fail_compensation("cus_1")
    void_by_hand(stripe, failed.authorization_id)

    # When they read the record's provider state
    answer = admin("GET", f"/admin/compensations/{failed.compensation_id}/provider-state")

    # Then the void shows done, no deadline counts down, and retry is refused with the reason
    assert answer.status == 200
    assert answer.body["payment"]["intent"]["status"] == "canceled"
    assert answer.body["payment"]["intent"]["capture_seconds_left"] is None
    assert [s["state"] for s in answer.body["steps"]] == ["done"]
    assert answer.body["retry"]["allowed"] is False
    assert "resolve it with a note" in answer.body["retry"]["reason"]


def test_provider_state_says_when_stripe_cannot_be_read_and_writes_nothing(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime, stripe
) -> None:
    failed = fail_compensation("cus_1")
    stripe.inject("retrieve", status=500)

    answer = admin("GET", f"/admin/compensations/{failed.compensation_id}/provider-state")

    assert answer.status == 200
    assert answer.body["payment"]["intent"] is None
    assert "could not read the intent from Stripe" in answer.body["payment"]["error"]
    assert [s["state"] for s in answer.body["steps"]] == ["unknown"]
    assert answer.body["retry"]["allowed"] is True


def test_provider_state_of_an_unknown_record_is_404(admin: Admin, console_runtime: Runtime) -> None:
    answer = admin("GET", "/admin/compensations/fc_nope/provider-state")
    assert answer.status == 404
    assert answer.body["error"] == "compensation_not_found"


# --- counts ------------------------------------------------------------------------------------------


def test_counts_per_status_follow_the_records(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime
) -> None:
    first = fail_compensation("cus_1")
    fail_compensation("cus_2")
    admin("POST", f"/admin/compensations/{first.compensation_id}/resolve", body={"note": "voided by hand"})

    answer = admin("GET", "/admin/counts")

    assert answer.status == 200
    assert answer.body == {"compensations": {"failed": 0, "retrying": 0, "pending": 1, "resolved": 1}}


# --- DLQ ---------------------------------------------------------------------------------------------


def _dlq_url(stack) -> str:
    return str(stack.physical["FailedCompensationsDLQ"]["Ref"])


def test_dlq_page_shows_both_queues_depth(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime, stack
) -> None:
    # Given one record's message waiting on the queue and one parked in the DLQ
    failed = fail_compensation("cus_1")
    boto3.client("sqs").send_message(QueueUrl=_dlq_url(stack), MessageBody=message_for(failed.compensation_id))

    answer = admin("GET", "/admin/dlq")

    assert answer.status == 200, answer.body
    assert answer.body["dlq"] == {"visible": 1, "in_flight": 0}
    assert answer.body["queue"]["visible"] == 1
    # moto has no message move tasks: the list is unknown, not empty
    assert answer.body["redrive_tasks"] is None


def test_redrive_moves_every_parked_message_back_and_records_who(
    admin: Admin,
    fail_compensation: FailCompensation,
    console_runtime: Runtime,
    stack,
    dlq_processor: EventSourceMapping,
) -> None:
    # Given a parked message for a record, Stripe healthy again
    failed = fail_compensation("cus_1")
    dlq_processor.drain()  # the first delivery voids it; the record is resolved
    boto3.client("sqs").send_message(QueueUrl=_dlq_url(stack), MessageBody=message_for(failed.compensation_id))

    # When the operator redrives the DLQ
    answer = admin("POST", "/admin/dlq/redrive", body={})

    # Then the message is back on the queue (moto: by receive-and-send), the DLQ is empty, and the caller named
    assert answer.status == 202, answer.body
    assert answer.body["method"] == "receive_and_send"
    assert answer.body["moved"] == 1
    assert answer.body["by"] == "arn:aws:iam::123456789012:user/operator"
    assert queue_depth(_dlq_url(stack)) == 0
    assert queue_depth(stack.physical["FailedCompensationsQueue"]["Ref"]) == 1


@pytest.mark.parametrize("code", ["AWS.SimpleQueueService.RequestThrottled", "InternalError"])
def test_dlq_page_and_redrive_say_sqs_is_unavailable_and_move_nothing_when_sqs_refuses(
    admin: Admin, make_runtime: Callable[..., Runtime], env: dict[str, str], stack, code: str
) -> None:
    # Given a parked message, and SQS refusing the admin function's calls
    env["FAILED_COMPENSATIONS_DLQ_URL"] = stack.environment("AdminFunction")["FAILED_COMPENSATIONS_DLQ_URL"]
    sqs = boto3.client("sqs")
    make_runtime(sqs=sqs)
    boto3.client("sqs").send_message(QueueUrl=_dlq_url(stack), MessageBody=json.dumps({"compensation_id": "fc_x"}))
    faults = AwsFaults(sqs)
    faults.fail("GetQueueAttributes", code=code, times=2)

    # Then both the page and the redrive answer 503 queue_unavailable, and the message stays parked
    for method, path in (("GET", "/admin/dlq"), ("POST", "/admin/dlq/redrive")):
        answer = admin(method, path, body={} if method == "POST" else None)
        assert answer.status == 503, answer.body
        assert answer.body["error"] == "queue_unavailable"
        assert answer.body["message"].startswith("SQS")
    assert queue_depth(_dlq_url(stack)) == 1


@pytest.mark.parametrize("body", [{"max_per_second": 0}, {"max_per_second": "fast"}, {"extra": 1}])
def test_redrive_with_a_bad_body_is_422_and_moves_nothing(
    admin: Admin, console_runtime: Runtime, stack, body: dict[str, object]
) -> None:
    boto3.client("sqs").send_message(QueueUrl=_dlq_url(stack), MessageBody=json.dumps({"compensation_id": "fc_x"}))

    answer = admin("POST", "/admin/dlq/redrive", body=body)

    assert answer.status == 422
    assert answer.body["error"] == "validation_error"
    assert queue_depth(_dlq_url(stack)) == 1


def test_dlq_routes_without_the_dlq_configured_say_so(admin: Admin, runtime: Runtime) -> None:
    answer = admin("GET", "/admin/dlq")
    assert answer.status == 500
    assert answer.body["error"] == "dlq_not_configured"


# --- KPIs --------------------------------------------------------------------------------------------


def _put(metric: str, value: float, at: float, *, namespace: str = "CheckoutTest", dimensions=None) -> None:
    boto3.client("cloudwatch").put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": dimensions or [{"Name": "service", "Value": "checkout"}],
                "Value": value,
                "Timestamp": datetime.fromtimestamp(at, UTC),
                "Unit": "Count",
            }
        ],
    )


def test_kpis_compute_the_plans_four_figures_over_the_window(
    admin: Admin, fail_compensation: FailCompensation, console_runtime: Runtime, clock: Clock, stack
) -> None:
    # Given metrics as the functions publish them, and two records: one resolved 10 minutes after it was made
    now = clock()
    for metric, value in {"CheckoutConfirmed": 8, "PaymentDeclined": 1, "CapturePending": 1}.items():
        _put(metric, value, now - 60)
    _put("CompensationFailed", 1, now - 60)
    _put("OrdersCompensated", 3, now - 60)
    topic = stack.physical["AlertsTopic"]["Ref"].rsplit(":", 1)[-1]
    _put(
        "NumberOfMessagesPublished",
        4,
        now - 60,
        namespace="AWS/SNS",
        dimensions=[{"Name": "TopicName", "Value": topic}],
    )
    resolved = fail_compensation("cus_1")
    fail_compensation("cus_2")
    clock.advance(600)
    admin("POST", f"/admin/compensations/{resolved.compensation_id}/resolve", body={"note": "voided by hand"})

    # When the operator asks for the last hour
    answer = admin("GET", "/admin/kpis", query={"window": "1h"})

    # Then each KPI is what the dashboard would show, and resolution time comes from the records
    assert answer.status == 200, answer.body
    body = answer.body
    assert body["saga_success_rate"]["value"] == 0.9
    assert body["compensation_failure_rate"]["value"] == 0.25
    assert body["alert_volume"]["value"] == 4
    assert body["alert_volume"]["saga_alerts_of_records"] == 2
    resolution = body["average_resolution_seconds"]
    assert resolution["value"] == pytest.approx(600, abs=5)
    assert (resolution["resolved"], resolution["still_open"], resolution["source"]) == (1, 1, "ledger")
    assert body["records_created"] == {"pending": 1, "retrying": 0, "failed": 0, "resolved": 1}


def test_kpis_without_metrics_say_no_data_rather_than_zero(admin: Admin, console_runtime: Runtime) -> None:
    answer = admin("GET", "/admin/kpis")

    assert answer.status == 200
    assert answer.body["window"] == "24h"
    assert answer.body["metrics_found"] is False
    assert answer.body["saga_success_rate"]["value"] is None
    assert answer.body["alert_volume"]["value"] is None


def test_kpis_say_cloudwatch_did_not_answer_rather_than_no_data_when_it_refuses(
    admin: Admin, make_runtime: Callable[..., Runtime], env: dict[str, str], stack
) -> None:
    env["FAILED_COMPENSATIONS_DLQ_URL"] = stack.environment("AdminFunction")["FAILED_COMPENSATIONS_DLQ_URL"]
    cloudwatch = boto3.client("cloudwatch")
    make_runtime(cloudwatch=cloudwatch)
    AwsFaults(cloudwatch).fail("GetMetricData", code="Throttling")

    answer = admin("GET", "/admin/kpis")

    # The figures the ledger gives are still there; the metric-based ones are unknown, and the page says why
    assert answer.status == 200, answer.body
    assert answer.body["metrics_found"] is False
    assert answer.body["metrics_error"].startswith("CloudWatch did not answer")
    assert answer.body["saga_success_rate"]["value"] is None


def test_kpis_for_an_unknown_window_is_422(admin: Admin, console_runtime: Runtime) -> None:
    answer = admin("GET", "/admin/kpis", query={"window": "1y"})
    assert answer.status == 422
    assert answer.body["error"] == "validation_error"
