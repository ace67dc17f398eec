"""The ledger makes a record, its queue message and exactly one alert, even when our own AWS plumbing fails.

Faults are injected on the runtime's real boto3 clients (botocore event hooks, tests/aws_faults.py).
"""

from __future__ import annotations

import json

import boto3
import pytest

from checkout.failed_compensations import FailedCompensation, OperationType, RecordIncomplete
from checkout.runtime import Runtime
from tests.aws_faults import AwsFaults, Crash
from tests.conftest import Clock
from tests.invariants import records


def record(runtime: Runtime, order_id: str = "ord_1") -> FailedCompensation:
    return runtime.ledger.record_failure(
        order_id=order_id,
        customer_id="cus_1",
        operation=OperationType.VOID_AUTHORIZATION,
        authorization_id="pi_1",
        error="cancel: 500",
    )


def queued(stack) -> list[dict]:
    sqs = boto3.client("sqs")
    url = stack.physical["FailedCompensationsQueue"]["Ref"]
    bodies = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def failed_alerts(inbox) -> list[dict]:
    return [a for a in inbox() if a["kind"] == "compensation_failed"]


def test_a_failure_is_recorded_queued_and_alerted_once(runtime: Runtime, stack, alerts_inbox) -> None:
    first = record(runtime)
    second = record(runtime)

    assert first.id == second.id
    [stored] = records(stack)
    assert stored["status"] == "pending"
    assert stored["retry_count"] == 0
    assert stored["max_retries"] == 3
    assert stored["alert_sent"] is True
    assert stored["queued"] is True
    assert {"compensation_id": first.id} in queued(stack)
    [alert] = alerts_inbox()
    assert alert["kind"] == "compensation_failed"
    assert alert["order_id"] == "ord_1"
    assert alert["customer_id"] == "cus_1"
    assert alert["operation_type"] == "void_authorization"
    assert alert["dlq_recorded"] is True
    assert alert["at"] == stored["created_at"]
    assert set(alert) >= {"severity", "error", "at", "compensation_id"}


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
@pytest.mark.parametrize("times", [1, 3])
def test_record_write_refused_leaves_nothing_half_made_and_the_next_try_completes_it(
    runtime: Runtime, stack, alerts_inbox, code: str, times: int
) -> None:
    # Given the FailedCompensations PutItem refused `times` times (after botocore's own retries)
    faults = AwsFaults(runtime.dynamodb)
    faults.fail("PutItem", code=code, times=times)

    # When the failure is recorded, it says so instead of pretending: no record, no message, no alert
    for _ in range(times):
        with pytest.raises(RecordIncomplete):
            record(runtime)
        assert records(stack) == []
    assert queued(stack) == []
    assert failed_alerts(alerts_inbox) == []

    # Then the next actor that records the same failure makes all three, once
    done = record(runtime)
    assert done.complete
    assert [r["id"] for r in records(stack)] == [done.id]
    assert queued(stack) == [{"compensation_id": done.id}]
    assert [a["compensation_id"] for a in failed_alerts(alerts_inbox)] == [done.id]


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
def test_sqs_send_refused_keeps_the_record_incomplete_until_the_next_try_queues_it(
    runtime: Runtime, stack, alerts_inbox, code: str
) -> None:
    faults = AwsFaults(runtime.sqs)
    faults.fail("SendMessage", code=code, times=2)

    for _ in range(2):
        with pytest.raises(RecordIncomplete) as raised:
            record(runtime)
    [stored] = records(stack)
    assert raised.value.record_id == stored["id"]
    assert stored["queued"] is False
    # No alert claims a message that does not exist
    assert failed_alerts(alerts_inbox) == []

    done = record(runtime)
    assert done.complete
    assert queued(stack) == [{"compensation_id": done.id}]
    assert len(failed_alerts(alerts_inbox)) == 1


@pytest.mark.parametrize("times", [1, 4])
def test_sns_publish_refused_is_published_by_the_next_try_exactly_once(
    runtime: Runtime, stack, alerts_inbox, times: int
) -> None:
    AwsFaults(runtime.sns).fail("Publish", code="InternalErrorException", times=times)

    for _ in range(times):
        with pytest.raises(RecordIncomplete):
            record(runtime)
        assert records(stack)[0]["alert_sent"] is False
    record(runtime)
    record(runtime)

    assert len(failed_alerts(alerts_inbox)) == 1
    assert records(stack)[0]["alert_sent"] is True


def test_a_crash_between_claiming_and_publishing_the_alert_loses_nothing(
    runtime: Runtime, stack, alerts_inbox, clock: Clock
) -> None:
    # Given an actor that died right after claiming the alert, before publishing it
    faults = AwsFaults(runtime.dynamodb)
    faults.crash("UpdateItem", after=True, when=lambda p: "alert_claimed_until = :until" in p["UpdateExpression"])
    with pytest.raises(Crash):
        record(runtime)
    assert failed_alerts(alerts_inbox) == []

    # When another actor touches the record while the claim still runs, it does not publish a second alert
    with pytest.raises(RecordIncomplete):
        record(runtime)
    assert failed_alerts(alerts_inbox) == []

    # Then once the dead actor's claim has run out, the next touch publishes it, once
    clock.advance(61)
    assert record(runtime).complete
    record(runtime)
    assert len(failed_alerts(alerts_inbox)) == 1


def test_a_resolved_record_is_never_reused_for_a_new_failure(runtime: Runtime, stack, alerts_inbox) -> None:
    first = record(runtime)
    assert runtime.ledger.resolve(first.id, by="dlq_processor") is not None

    second = record(runtime)

    assert second.id != first.id
    assert second.generation == 2
    assert second.complete
    by_id = {r["id"]: r for r in records(stack)}
    assert by_id[first.id]["status"] == "resolved"
    assert by_id[second.id]["status"] == "pending"
    assert sorted(m["compensation_id"] for m in queued(stack)) == sorted([first.id, second.id])
    assert sorted(a["compensation_id"] for a in failed_alerts(alerts_inbox)) == sorted([first.id, second.id])


def test_a_record_write_whose_answer_was_lost_recognises_itself_on_the_sdk_retry(
    runtime: Runtime, stack, alerts_inbox
) -> None:
    # Given a PutItem that went through and that botocore re-sent (its answer lost), failing its condition
    faults = AwsFaults(runtime.dynamodb)
    faults.retry_after_success("PutItem")

    done = record(runtime)

    assert ("retry", "PutItem") in faults.fired
    assert done.complete
    assert len(records(stack)) == 1
    assert len(failed_alerts(alerts_inbox)) == 1


@pytest.mark.parametrize("write", ["claim", "resolve", "record_attempt_failure"])
def test_a_ledger_update_retried_after_it_went_through_reports_its_own_effect(
    runtime: Runtime, stack, write: str
) -> None:
    made = record(runtime)
    AwsFaults(runtime.dynamodb).retry_after_success("UpdateItem")

    if write == "claim":
        result = runtime.ledger.claim(made, owner="msg_1", lease_seconds=30)
        assert result is not None
        assert result.lease_owner == "msg_1"
    elif write == "resolve":
        result = runtime.ledger.resolve(made.id, by="dlq_processor")
        assert result is not None
        assert result.status == "resolved"
    else:
        result = runtime.ledger.record_attempt_failure(made, error="void: 500", key_attempts={}, open_steps=[])
        assert result is not None
        assert result.retry_count == 1
    [stored] = records(stack)
    assert stored["retry_count"] == (1 if write == "record_attempt_failure" else 0)
