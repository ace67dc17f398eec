"""The dlq_processor on the real FailedCompensations queue (moto): bounded retries, the DLQ, redrive, bad messages."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from checkout.cli import main as checkout_admin
from tests.conftest import Clock
from tests.integration.conftest import FailedOrder, message_for, order_row, record_of, send
from tests.invariants import assert_money_invariants
from tests.sqs import EventSourceMapping, peek_bodies, queue_depth

FailCompensation = Callable[..., FailedOrder]


def queue_url(stack) -> str:
    return stack.physical["FailedCompensationsQueue"]["Ref"]


def dlq_url(stack) -> str:
    return stack.physical["FailedCompensationsDLQ"]["Ref"]


def void_keys(stripe, order_id: str) -> list[str]:
    keys = [r["idempotency_key"] for r in stripe.requests if r["operation"] == "cancel"]
    return [key for key in keys if key and key.startswith(f"{order_id}:void")]


def emitted_metrics(output: str) -> dict[str, list[float]]:
    """The CloudWatch metrics (EMF lines) the handlers printed."""
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                found.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return found


def test_void_failing_twice_then_working_resolves_and_compensates_the_order(
    fail_compensation: FailCompensation,
    dlq_processor: EventSourceMapping,
    stack,
    stripe,
    warehouse,
    alerts_inbox,
    clock: Clock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given an order whose void failed, recorded and queued, and a provider that fails the next two voids
    failed = fail_compensation()
    stripe.inject("cancel", status=500, times=2)

    # When SQS delivers the message, twice failing, each time again after the visibility timeout
    first = dlq_processor.deliver()
    assert first.failed_bodies == [message_for(failed.compensation_id)]
    assert record_of(stack, failed.compensation_id)["status"] == "retrying"
    assert record_of(stack, failed.compensation_id)["retry_count"] == 1
    dlq_processor.visibility_expires()
    second = dlq_processor.deliver()
    assert len(second.failed) == 1
    dlq_processor.visibility_expires()
    clock.advance(60)
    capsys.readouterr()
    third = dlq_processor.deliver()

    # Then the third try voids it: record resolved, order COMPENSATED, one void in the provider's ledger
    assert third.failed == []
    record = record_of(stack, failed.compensation_id)
    assert record["status"] == "resolved"
    assert record["retry_count"] == 2
    assert record["resolved_at"] is not None
    assert record["resolved_by"] == "dlq_processor"
    order = order_row(stack, failed.order_id)
    assert order["saga_state"] == "COMPENSATED"
    assert (order["history"][-1]["from"], order["history"][-1]["to"]) == ("COMPENSATION_FAILED", "COMPENSATED")
    assert stripe.count("canceled", failed.order_id) == 1
    assert stripe.intents[failed.authorization_id]["status"] == "canceled"
    # Each try used the order's own key; a new number only after a read-back proved the void had not happened
    oid = failed.order_id
    assert void_keys(stripe, oid) == [f"{oid}:void", f"{oid}:void:2", f"{oid}:void:3", f"{oid}:void:4"]
    # And the message is gone, nothing parked, no exhausted alert, the resolution time measured
    assert queue_depth(queue_url(stack)) == 0
    assert queue_depth(dlq_url(stack)) == 0
    assert Counter(a["kind"] for a in alerts_inbox()) == {"compensation_failed": 1}
    [seconds] = emitted_metrics(capsys.readouterr().out)["CompensationResolutionSeconds"]
    assert seconds >= 60
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_void_failing_forever_parks_the_message_in_the_dlq_with_one_exhausted_alert(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given an order whose void fails, and a provider that keeps failing voids
    failed = fail_compensation()
    stripe.inject("cancel", status=500)

    # When SQS delivers it until its redrive policy gives up (maxReceiveCount = COMPENSATION_MAX_RETRIES = 3)
    deliveries = dlq_processor.drain()

    # Then three tries were made, the record is failed, and the message sits in the DLQ
    assert [len(d.failed) for d in deliveries] == [1, 1, 1]
    record = record_of(stack, failed.compensation_id)
    assert record["status"] == "failed"
    assert record["retry_count"] == 3
    assert record["max_retries"] == 3
    assert "void" in record["error_message"]
    assert queue_depth(queue_url(stack)) == 0
    assert peek_bodies(dlq_url(stack)) == [{"compensation_id": failed.compensation_id}]
    # And the operator was told twice: once when it failed, once when retries ran out
    alerts = alerts_inbox()
    assert Counter(a["kind"] for a in alerts) == {"compensation_failed": 1, "compensation_exhausted": 1}
    [exhausted] = [a for a in alerts if a["kind"] == "compensation_exhausted"]
    assert exhausted["compensation_id"] == failed.compensation_id
    assert exhausted["order_id"] == failed.order_id
    assert exhausted["subject"] == f"[checkout] compensation_exhausted: order {failed.order_id}"
    assert exhausted["attributes"] == {"kind": "compensation_exhausted", "severity": "critical"}
    assert order_row(stack, failed.order_id)["saga_state"] == "COMPENSATION_FAILED"
    assert stripe.count("canceled") == 0
    # The hold is still there, named by an open record whose alert went out (invariant 2)
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts)


def test_a_message_redriven_from_the_dlq_is_processed_again_and_resolves(
    fail_compensation: FailCompensation,
    dlq_processor: EventSourceMapping,
    stack,
    stripe,
    warehouse,
    alerts_inbox,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a failed compensation whose retries ran out while the provider was down
    failed = fail_compensation()
    stripe.inject("cancel", status=500)
    dlq_processor.drain()
    assert queue_depth(dlq_url(stack)) == 1

    # When the provider is back and the operator redrives the DLQ
    stripe.clear_faults()
    capsys.readouterr()
    assert (
        checkout_admin(
            ["--queue-url", queue_url(stack), "--dlq-url", dlq_url(stack), "--operator", "ops", "redrive-dlq"]
        )
        == 0
    )
    redrive = json.loads(capsys.readouterr().out)
    delivery = dlq_processor.deliver()

    # Then the redriven message is processed again: resolved, order COMPENSATED, voided once
    assert redrive["moved"] == 1
    assert delivery.bodies == [message_for(failed.compensation_id)]
    assert delivery.failed == []
    assert record_of(stack, failed.compensation_id)["status"] == "resolved"
    assert order_row(stack, failed.order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("canceled", failed.order_id) == 1
    assert queue_depth(queue_url(stack)) == 0
    assert queue_depth(dlq_url(stack)) == 0
    # No second exhausted alert, no new failed alert
    assert Counter(a["kind"] for a in alerts_inbox()) == {"compensation_failed": 1, "compensation_exhausted": 1}
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_one_failing_void_in_a_batch_fails_only_its_own_message(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given eleven failed compensations queued, and a provider that will fail exactly one of their voids
    failed = [fail_compensation(f"cus_{n}") for n in range(11)]
    stripe.inject("cancel", status=500, times=1)

    # When the processor takes them in batches of ten
    batches = [dlq_processor.deliver(), dlq_processor.deliver()]

    # Then only the message whose void failed is reported; the ten others are resolved and deleted
    assert [len(b.bodies) for b in batches] == [10, 1]
    reported = [body for batch in batches for body in batch.failed_bodies]
    assert len(reported) == 1
    bad_id = json.loads(reported[0])["compensation_id"]
    statuses = {f.compensation_id: record_of(stack, f.compensation_id)["status"] for f in failed}
    assert statuses.pop(bad_id) == "retrying"
    assert set(statuses.values()) == {"resolved"}
    assert queue_depth(queue_url(stack)) == 1
    # And the failed one is retried on its next delivery
    dlq_processor.visibility_expires()
    assert dlq_processor.deliver().failed == []
    assert {record_of(stack, f.compensation_id)["status"] for f in failed} == {"resolved"}
    assert all(stripe.count("canceled", f.order_id) == 1 for f in failed)
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_duplicate_delivery_never_repeats_a_void_that_went_through(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a failed compensation whose message SQS delivers twice (at-least-once), in one batch
    failed = fail_compensation()
    send(stack, message_for(failed.compensation_id))

    # When both copies are processed, and then the same message once more
    delivery = dlq_processor.deliver()
    send(stack, message_for(failed.compensation_id))
    again = dlq_processor.deliver()

    # Then one void was sent after the confirm's failed one, the record resolved once, nothing reported
    assert len(delivery.bodies) == 2
    assert delivery.failed == []
    assert again.failed == []
    assert stripe.count("canceled", failed.order_id) == 1
    assert len(void_keys(stripe, failed.order_id)) == 2
    record = record_of(stack, failed.compensation_id)
    assert record["status"] == "resolved"
    assert record["retry_count"] == 0
    assert queue_depth(queue_url(stack)) == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_a_retry_that_voided_but_could_not_release_retries_only_the_release(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given an order whose void and release both failed, and a warehouse that fails the next release too
    failed = fail_compensation(release_fails=True)
    assert record_of(stack, failed.compensation_id)["operation_type"] == "order_compensation"
    warehouse.inject("release", status=500, times=1)

    # When the first retry voids but cannot release, and the message comes back
    first = dlq_processor.deliver()
    dlq_processor.visibility_expires()
    second = dlq_processor.deliver()

    # Then the second try released the stock (under a new key: the old one replays its 500) and did not
    # send the void that went through again
    assert len(first.failed) == 1
    assert second.failed == []
    assert [r["status"] for r in stripe.requests if r["operation"] == "cancel"] == [500, 200]
    assert stripe.count("canceled", failed.order_id) == 1
    release_keys = [r["idempotency_key"] for r in warehouse.requests if r["operation"] == "release"]
    oid = failed.order_id
    assert release_keys == [f"{oid}:release", f"{oid}:release:2", f"{oid}:release:3"]
    assert warehouse.reservations[failed.reservation_id]["status"] == "released"
    assert record_of(stack, failed.compensation_id)["status"] == "resolved"
    assert order_row(stack, failed.order_id)["saga_state"] == "COMPENSATED"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("not json at all", id="not-json"),
        pytest.param('{"compensation_id": "fc_does_not_exist"}', id="unknown-id"),
        pytest.param('{"order_id": "ord_1"}', id="wrong-shape"),
        pytest.param("[1, 2]", id="not-an-object"),
    ],
)
def test_a_malformed_message_is_reported_without_losing_the_rest_of_the_batch(
    body: str,
    fail_compensation: FailCompensation,
    dlq_processor: EventSourceMapping,
    stack,
    stripe,
    warehouse,
    alerts_inbox,
) -> None:
    # Given a batch with a message that is no failed compensation, between two real ones
    first = fail_compensation("cus_1")
    send(stack, body)
    second = fail_compensation("cus_2")

    # When the batch is processed
    delivery = dlq_processor.deliver()

    # Then only the malformed message is reported; both real ones are resolved
    assert len(delivery.bodies) == 3
    assert delivery.failed_bodies == [body]
    assert record_of(stack, first.compensation_id)["status"] == "resolved"
    assert record_of(stack, second.compensation_id)["status"] == "resolved"
    # And after its deliveries run out it waits in the DLQ for a person, with nothing written for it
    dlq_processor.visibility_expires()
    dlq_processor.drain()
    parked = peek_bodies(dlq_url(stack))
    assert len(parked) == 1
    assert json.dumps(parked[0]) == body or parked[0] == body
    assert queue_depth(queue_url(stack)) == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_a_message_for_a_resolved_record_does_nothing(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a failed compensation already resolved by a retry
    failed = fail_compensation()
    dlq_processor.deliver()
    before: dict[str, Any] = record_of(stack, failed.compensation_id)
    requests = len(stripe.requests)

    # When a stale message for it arrives (an operator's retry racing the processor, say)
    send(stack, message_for(failed.compensation_id))
    delivery = dlq_processor.deliver()

    # Then it is deleted, and neither the record nor the provider sees anything
    assert delivery.failed == []
    assert record_of(stack, failed.compensation_id) == before
    assert len(stripe.requests) == requests
    assert queue_depth(queue_url(stack)) == 0
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_the_committed_sample_event_names_no_record_here_and_is_reported(runtime, stack) -> None:
    from pathlib import Path

    from functions.dlq_processor.app import lambda_handler
    from tests.conftest import LambdaContext

    event = json.loads((Path(__file__).parents[2] / "events" / "dlq_processor_failed_compensation.json").read_text())

    result = lambda_handler(event, LambdaContext(timeout_seconds=30))

    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_a_delivery_lost_to_a_crash_still_ends_failed_with_one_alert_before_the_dlq(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a failing void, and a first delivery whose run died before it could try
    failed = fail_compensation()
    stripe.inject("cancel", status=500)
    dlq_processor.crash()
    dlq_processor.visibility_expires()

    # When the two deliveries SQS has left both fail
    deliveries = dlq_processor.drain()

    # Then the record is failed on the message's last delivery (two tries, not three), alerted once, parked
    assert [len(d.failed) for d in deliveries] == [1, 1]
    record = record_of(stack, failed.compensation_id)
    assert (record["status"], record["retry_count"]) == ("failed", 2)
    assert peek_bodies(dlq_url(stack)) == [{"compensation_id": failed.compensation_id}]
    assert Counter(a["kind"] for a in alerts_inbox()) == {"compensation_failed": 1, "compensation_exhausted": 1}
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_a_message_with_too_little_time_left_is_requeued_without_using_a_try(
    fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, lambda_context
) -> None:
    # Given a failed compensation, delivered to a run with too little time for a void and a release
    failed = fail_compensation()
    requests = len(stripe.requests)

    # When the run takes the message
    delivery = dlq_processor.deliver(context=lambda_context(timeout_seconds=5))

    # Then it is not tried and not counted: a fresh (delayed) message is queued for a later run instead
    assert delivery.failed == []
    assert len(stripe.requests) == requests
    record = record_of(stack, failed.compensation_id)
    assert (record["status"], record["retry_count"]) == ("pending", 0)
    assert queue_depth(queue_url(stack)) == 1


def test_two_deliveries_of_one_record_at_once_send_one_void(
    fail_compensation: FailCompensation, stack, stripe, warehouse, alerts_inbox, lambda_context
) -> None:
    import threading

    from checkout.deadline import Deadline
    from checkout.runtime import runtime

    # Given one record with two messages taken by two processors at the same time, and a slow provider
    failed = fail_compensation()
    stripe.inject("cancel", delay=0.3, times=1)
    outcomes: list[str] = []

    def process(message_id: str) -> None:
        result = runtime().compensation_retries.process(
            message_for(failed.compensation_id),
            Deadline.from_context(lambda_context(timeout_seconds=30)),
            message_id=message_id,
            receive_count=1,
        )
        outcomes.append(result.outcome.value)

    # When both process it
    threads = [threading.Thread(target=process, args=(f"msg-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the lease let one of them retry; the other stood down; one void was executed
    assert sorted(outcomes) in (["in_progress", "resolved"], ["already_resolved", "resolved"])
    executed = [r for r in stripe.requests if r["operation"] == "cancel" and not r["replayed"]]
    assert [r["status"] for r in executed] == [500, 200]
    assert record_of(stack, failed.compensation_id)["status"] == "resolved"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())
