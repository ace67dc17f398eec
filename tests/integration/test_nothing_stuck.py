"""Nothing stuck, nothing silent (issue 9): our own AWS plumbing fails too, and no order is left where no actor looks.

Each test injects the failure on the real boto3 clients (botocore event hooks, tests/aws_faults.py) and asserts
what an operator sees: the order's state, the failed-compensation records, the queue, the alerts, the providers'
ledgers. Section 7's row "our own DynamoDB write, SQS send or SNS publish fails mid-compensation".
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from checkout.runtime import Runtime
from tests.aws_faults import AwsFaults, Crash
from tests.conftest import Clock, LambdaContext
from tests.integration.test_confirm import Api, confirm, open_session
from tests.integration.test_workers import STALE, run_worker, stored, wait_for
from tests.invariants import assert_money_invariants, orders, records
from tests.sqs import EventSourceMapping, peek_bodies, queue_depth


def exhausted_order(api: Api, make_runtime: Callable[..., Runtime], stripe, clock: Clock, **settings: Any) -> str:
    """An order whose capture retries are used up (one allowed): CAPTURE_FAILED, due for compensation."""
    make_runtime(settings={"CAPTURE_MAX_RETRIES": 1, **settings})
    session = open_session(api)
    stripe.inject("capture", status=500)
    order_id: str = confirm(api, session["session_id"]).body["order_id"]
    clock.advance(61)
    assert run_worker("capture_retry")["exhausted"] == 1
    stripe.clear_faults()
    return order_id


def queue_url(stack) -> str:
    return str(stack.physical["FailedCompensationsQueue"]["Ref"])


def on_ledger_table(stack) -> Callable[[dict[str, Any]], bool]:
    table = stack.physical["FailedCompensationsTable"]["Ref"]
    return lambda params: params.get("TableName") == table


def failed_alerts(alerts_inbox) -> list[dict[str, Any]]:
    return [a for a in alerts_inbox() if a["kind"] == "compensation_failed"]


def assert_complete_failed_compensation(stack, order_id: str, alerts_inbox) -> dict[str, Any]:
    """COMPENSATION_FAILED with its record, a queue message naming it, and exactly one alert."""
    order = stored(stack, order_id)
    assert order["saga_state"] == "COMPENSATION_FAILED"
    [record] = [r for r in records(stack) if r["order_id"] == order_id]
    assert order["compensation_id"] == record["id"]
    assert {"compensation_id": record["id"]} in peek_bodies(queue_url(stack))
    assert [a["compensation_id"] for a in failed_alerts(alerts_inbox)] == [record["id"]]
    return record


# --- 1. no dead-end COMPENSATION_FAILED ------------------------------------------------------------


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
@pytest.mark.parametrize("times", [1, 3])
def test_record_write_failing_leaves_the_order_compensating_and_due_until_it_is_recorded(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox, code: str, times: int
) -> None:
    # Given an order to compensate whose void fails, and a FailedCompensations PutItem refused `times` runs
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500)
    faults = AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).dynamodb)
    faults.fail("PutItem", code=code, times=times, when=on_ledger_table(stack))

    # When the compensation worker runs while the record cannot be written
    for _ in range(times):
        run_worker("compensation")
        # Then the order is not parked in COMPENSATION_FAILED without a record: it stays COMPENSATING and due
        order = stored(stack, order_id)
        assert order["saga_state"] == "COMPENSATING"
        assert order["work_queue"].split("#")[0] == "recovery"
        assert records(stack) == []
        assert queue_depth(queue_url(stack)) == 0
        assert failed_alerts(alerts_inbox) == []
        clock.advance(STALE + 1)

    # When the next run finds the plumbing healthy (the provider still refusing voids)
    run_worker("compensation")

    # Then record, message and one alert exist, and only now is the order COMPENSATION_FAILED
    record = assert_complete_failed_compensation(stack, order_id, alerts_inbox)
    assert record["status"] == "pending"
    # And the history did not grow with the runs that could not record
    assert [h["to"] for h in stored(stack, order_id)["history"]][-2:] == ["COMPENSATING", "COMPENSATION_FAILED"]
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
def test_sqs_send_failing_leaves_the_order_due_and_the_next_run_queues_and_alerts_once(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox, code: str
) -> None:
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500)
    AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).sqs).fail("SendMessage", code=code, times=2)

    run_worker("compensation")

    # Then the record exists but is not complete: no message, so no alert claims one, and the order is due
    assert stored(stack, order_id)["saga_state"] == "COMPENSATING"
    [record] = records(stack)
    assert queue_depth(queue_url(stack)) == 0
    assert failed_alerts(alerts_inbox) == []

    # When recovery takes the order again (SQS still refusing once, then healthy)
    clock.advance(STALE + 1)
    run_worker("compensation")
    assert stored(stack, order_id)["saga_state"] == "COMPENSATING"
    clock.advance(STALE + 1)
    run_worker("compensation")

    # Then the same record is completed: its message, one alert, and the order COMPENSATION_FAILED
    again = assert_complete_failed_compensation(stack, order_id, alerts_inbox)
    assert again["id"] == record["id"]
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_a_record_whose_answer_was_lost_is_found_again_not_duplicated(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given the record's PutItem goes through but its answer is lost
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500)
    AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).dynamodb).lose_answer(
        "PutItem", when=on_ledger_table(stack)
    )

    run_worker("compensation")
    assert stored(stack, order_id)["saga_state"] == "COMPENSATING"
    clock.advance(STALE + 1)
    run_worker("compensation")

    # Then one record (the first write's), one message, one alert
    assert_complete_failed_compensation(stack, order_id, alerts_inbox)
    assert len(records(stack)) == 1


def test_the_dlq_processor_completes_and_resolves_a_record_then_recovery_finishes_the_order(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox, dlq_processor: EventSourceMapping
) -> None:
    # Given a record whose message went out but whose alert could not be published
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500, times=1)
    AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).sns).fail("Publish", code="InternalErrorException")
    run_worker("compensation")
    assert stored(stack, order_id)["saga_state"] == "COMPENSATING"
    assert queue_depth(queue_url(stack)) == 1
    assert failed_alerts(alerts_inbox) == []

    # When the dlq_processor receives the message with a healthy SNS and provider
    delivery = dlq_processor.deliver()

    # Then it sends the missing alert, retries the void and resolves the record
    assert delivery.failed == []
    [record] = records(stack)
    assert record["status"] == "resolved"
    assert len(failed_alerts(alerts_inbox)) == 1
    # And recovery finishes the order, which it still owns
    clock.advance(STALE + 1)
    run_worker("compensation")
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert stripe.count("canceled", order_id) == 1
    assert len(failed_alerts(alerts_inbox)) == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_a_resolved_record_is_not_reused_for_a_new_failure_of_the_same_step(runtime: Runtime, stack, alerts_inbox):
    from checkout.failed_compensations import OperationType

    def record_void_failure() -> Any:
        return runtime.ledger.record_failure(
            order_id="ord_1", customer_id="cus_1", operation=OperationType.VOID_AUTHORIZATION,
            authorization_id="pi_1", error="cancel: 500",
        )  # fmt: skip

    first = record_void_failure()
    runtime.ledger.resolve(first.id, by="arn:aws:iam::123456789012:user/operator")

    second = record_void_failure()

    assert second.id != first.id
    assert Counter(r["status"] for r in records(stack)) == {"resolved": 1, "pending": 1}
    assert sorted(b["compensation_id"] for b in peek_bodies(queue_url(stack))) == sorted([first.id, second.id])
    assert sorted(a["compensation_id"] for a in failed_alerts(alerts_inbox)) == sorted([first.id, second.id])


@pytest.mark.parametrize("fault", ["crash_after_the_move", "ledger_query_refused"])
def test_an_incomplete_record_is_closed_before_its_order_is_compensated_never_left_open_behind_it(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox, fault: str
) -> None:
    # Given an order whose first compensation left an incomplete record: the void failed, SQS refused the message
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500, times=1)
    runtime = make_runtime(settings={"CAPTURE_MAX_RETRIES": 1})
    AwsFaults(runtime.sqs).fail("SendMessage", times=2)
    run_worker("compensation")
    [record] = records(stack)
    assert not record["queued"]
    assert stored(stack, order_id)["saga_state"] == "COMPENSATING"

    # When recovery compensates it with healthy providers, and the run dies right after the order's move to
    # COMPENSATED (or the ledger cannot be read to close the record)
    faults = AwsFaults(runtime.dynamodb)
    orders_table = stack.physical["OrdersTable"]["Ref"]
    if fault == "crash_after_the_move":
        faults.crash(
            "UpdateItem",
            after=True,
            when=lambda p: (
                p.get("TableName") == orders_table and "COMPENSATED" in str(p.get("ExpressionAttributeValues"))
            ),
        )
    else:
        faults.fail("Query", when=lambda p: p.get("IndexName") == "order-index")
    clock.advance(STALE + 1)
    with contextlib.suppress(Crash):
        run_worker("compensation")
    clock.advance(STALE + 1)
    run_worker("compensation")

    # Then the order is COMPENSATED and its record resolved: no record stays open with nobody to move it
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    [record] = records(stack)
    assert record["status"] == "resolved"
    # (resolved before it was complete, so nobody is paged for it: docs/decisions.md)
    assert failed_alerts(alerts_inbox) == []
    assert stripe.count("canceled", order_id) == 1
    assert_money_invariants(stack, stripe, warehouse, converged=True)


# --- 2. no lost alert ------------------------------------------------------------------------------


@pytest.mark.parametrize("times", [1, 3])
def test_sns_publish_failing_is_retried_by_the_next_run_and_alerts_exactly_once(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox, times: int
) -> None:
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500)
    AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).sns).fail(
        "Publish", code="InternalErrorException", times=times
    )

    for _ in range(times):
        run_worker("compensation")
        assert stored(stack, order_id)["saga_state"] == "COMPENSATING"
        assert failed_alerts(alerts_inbox) == []
        clock.advance(STALE + 1)
    run_worker("compensation")

    assert_complete_failed_compensation(stack, order_id, alerts_inbox)
    # And later runs do not alert again
    clock.advance(STALE + 1)
    run_worker("compensation")
    assert len(failed_alerts(alerts_inbox)) == 1


def test_a_crash_between_claiming_the_alert_and_publishing_it_does_not_lose_the_alert(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given a worker that dies right after its write marking the record's alert (before publishing)
    order_id = exhausted_order(api, make_runtime, stripe, clock)
    stripe.inject("cancel", status=500)
    faults = AwsFaults(make_runtime(settings={"CAPTURE_MAX_RETRIES": 1}).dynamodb)
    ledger = on_ledger_table(stack)
    faults.crash("UpdateItem", after=True, when=lambda p: ledger(p) and "alert" in str(p))
    with pytest.raises(Crash):
        run_worker("compensation")
    assert failed_alerts(alerts_inbox) == []

    # When recovery takes the order over once its lease has run out
    clock.advance(STALE + 200)
    run_worker("compensation")

    # Then the alert is published, once, and the order is COMPENSATION_FAILED with all three
    assert_complete_failed_compensation(stack, order_id, alerts_inbox)


def test_an_alert_sent_again_after_its_sent_mark_was_lost_is_identical_though_a_retry_failed_meanwhile(
    runtime: Runtime, stack, clock: Clock, alerts_inbox
) -> None:
    from checkout.failed_compensations import MARK_SENT_TRIES, OperationType, RecordIncomplete

    # Given an alert that went out but whose "sent" mark DynamoDB refused every time
    faults = AwsFaults(runtime.dynamodb)
    faults.fail(
        "UpdateItem", times=MARK_SENT_TRIES, when=lambda p: "alert_sent = :true" in p.get("UpdateExpression", "")
    )
    with pytest.raises(RecordIncomplete):
        runtime.ledger.record_failure(
            order_id="ord_1", customer_id="cus_1", operation=OperationType.VOID_AUTHORIZATION,
            authorization_id="pi_1", error="cancel: 500 (first try)",
        )  # fmt: skip
    [item] = records(stack)
    # And a retry that failed differently before anyone completed the record
    record = runtime.ledger.get(item["id"])
    assert record is not None
    runtime.ledger.record_attempt_failure(
        record, error="cancel: 502 (second try)", key_attempts={}, open_steps=[OperationType.VOID_AUTHORIZATION]
    )

    # When the next actor completes the record once the alert claim has run out
    clock.advance(61)
    completed = runtime.ledger.complete(runtime.ledger.get(item["id"]))  # type: ignore[arg-type]

    # Then the alert is sent again, identical, so a pager collapses the two
    assert completed.alert_sent
    first, second = failed_alerts(alerts_inbox)
    assert first == second
    assert first["error"] == "cancel: 500 (first try)"
    # And the record still tells the operator the latest error
    assert records(stack)[0]["error_message"] == "cancel: 502 (second try)"


# --- 4. an order stays small ---------------------------------------------------------------------


def test_an_outage_reschedules_captures_without_growing_the_order(
    make_runtime, api: Api, stack, stripe, clock: Clock
) -> None:
    # Given a pending capture and a provider whose captures all fail, with a circuit that opens at once
    make_runtime(settings={"CIRCUIT_FAILURE_THRESHOLD": 1})
    session = open_session(api)
    stripe.inject("capture", status=500)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    before = stored(stack, order_id)

    # When the retry worker runs again and again during the outage
    for _ in range(20):
        clock.advance(1801)
        assert run_worker("capture_retry")["circuit"] == "open"

    # Then the order is still due, no attempt was counted and no history entry was added
    after = stored(stack, order_id)
    assert after["saga_state"] == "CAPTURE_PENDING"
    assert after["capture_attempts"] == before["capture_attempts"]
    assert len(after["history"]) == len(before["history"])
    assert after["work_queue"].split("#")[0] == "capture"


# --- 5. running out of Lambda time pages nobody --------------------------------------------------


def test_a_void_cut_short_by_the_end_of_the_run_is_left_due_not_recorded(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given an order to compensate, and a provider so slow that the void and its read-back use up the run
    order_id = exhausted_order(api, make_runtime, stripe, clock, PAYMENT_TIMEOUT_SECONDS=5)
    stripe.inject("cancel", delay=12, times=1)
    stripe.inject("retrieve", delay=12, times=1)

    # When the compensation worker runs with just enough time to take the order (5 s call + margins)
    import functions.compensation.app as compensation_app

    summary = compensation_app.lambda_handler({}, LambdaContext(timeout_seconds=10.5))

    # Then no failed compensation is recorded, nobody is paged, and the circuit did not count it
    assert summary["compensation_failed"] == 0
    assert records(stack) == []
    assert failed_alerts(alerts_inbox) == []
    assert summary["circuit"] == "closed"
    order = stored(stack, order_id)
    assert order["saga_state"] == "COMPENSATING"
    assert order["work_queue"].split("#")[0] == "recovery"

    # And the next run, with time and a healthy provider, compensates it (once the slow cancel has finished)
    wait_for(lambda: stripe.count("canceled") == 1, timeout=15)
    clock.advance(STALE + 1)
    assert run_worker("compensation")["compensated"] == 1
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


# --- 6. no silent loop ---------------------------------------------------------------------------


def test_an_authorize_that_can_never_be_settled_is_recorded_and_alerted_after_max_attempts(
    make_runtime, api: Api, stack, stripe, warehouse, clock: Clock, alerts_inbox
) -> None:
    # Given an AUTH_UNKNOWN order whose authorize key replays a stored 5xx and whose search keeps failing
    make_runtime(settings={"RECOVERY_MAX_ATTEMPTS": 3})
    session = open_session(api)
    stripe.inject("authorize", status=500, times=1)
    assert confirm(api, session["session_id"]).status == 502
    [order] = orders(stack)
    stripe.inject("search", status=500)
    history = len(order["history"])

    # When recovery runs RECOVERY_MAX_ATTEMPTS - 1 times, the order is left due without growing
    for _ in range(2):
        clock.advance(601)
        run_worker("compensation")
        now = stored(stack, order["order_id"])
        assert now["saga_state"] == "AUTH_UNKNOWN"
        assert len(now["history"]) == history
        assert records(stack) == []

    # Then the last run records it, queues it and alerts: a person looks, it is never a silent loop
    clock.advance(601)
    run_worker("compensation")
    record = assert_complete_failed_compensation(stack, order["order_id"], alerts_inbox)
    assert "RECOVERY_MAX_ATTEMPTS" in record["error_message"]
    assert_money_invariants(stack, stripe, warehouse, converged=False, alerts=alerts_inbox())


# --- 7. a second release key only after an answer ----------------------------------------------


def release_keys(warehouse, order_id: str) -> list[str]:
    return [
        r["idempotency_key"]
        for r in warehouse.requests
        if r["operation"] == "release" and (r["idempotency_key"] or "").startswith(f"{order_id}:")
    ]


@pytest.mark.parametrize(
    ("fault", "second_key"),
    [
        ({"delay": 3}, False),  # timed out: the first request may still be running
        ({"lose_response": True}, False),  # the connection dropped: same
        ({"status": 500}, True),  # an answer: a stored 5xx the warehouse replays for ever
    ],
)
def test_a_release_takes_a_new_key_only_after_an_answer_was_received(
    make_runtime,
    api: Api,
    stack,
    stripe,
    warehouse,
    clock: Clock,
    dlq_processor: EventSourceMapping,
    fault: dict[str, Any],
    second_key: bool,
) -> None:
    order_id = exhausted_order(api, make_runtime, stripe, clock, WAREHOUSE_TIMEOUT_SECONDS=1)
    warehouse.inject("release", times=1, **fault)

    run_worker("compensation")
    [record] = records(stack)
    assert record["operation_type"] == "release_reservation"
    # (a request that timed out still runs at the warehouse; its key answers 409 in use until it finishes)
    if not second_key:
        wait_for(lambda: warehouse.count("released") == 1)

    # When the dlq_processor retries the release
    assert dlq_processor.deliver().failed == []

    expected = [f"{order_id}:release", f"{order_id}:release:2"] if second_key else [f"{order_id}:release"] * 2
    assert release_keys(warehouse, order_id) == expected
    assert stored(stack, order_id)["saga_state"] == "COMPENSATED"


# --- something pages a person whatever the cause -------------------------------------------------


def test_a_worker_that_cannot_write_an_outcome_reports_it_in_the_worker_errors_metric(
    make_runtime, api: Api, stack, stripe, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a due capture, and an Orders table refusing the write that would record it as captured
    from tests.integration.test_dlq_processor import emitted_metrics

    session = open_session(api)
    stripe.inject("capture", status=500, times=1)
    order_id = confirm(api, session["session_id"]).body["order_id"]
    clock.advance(61)
    faults = AwsFaults(make_runtime().dynamodb)
    faults.fail("UpdateItem", code="ThrottlingException", when=lambda p: "CAPTURED" in str(p))
    capsys.readouterr()

    summary = run_worker("capture_retry")

    # Then the run counts the error and emits it, for the WorkerErrors alarm; the order is still due
    assert summary["errors"] == 1
    assert emitted_metrics(capsys.readouterr().out)["WorkerErrors"] == [1.0]
    assert stored(stack, order_id)["work_queue"].split("#")[0] == "capture"


def test_an_order_nobody_moves_shows_in_the_oldest_overdue_metric_though_nothing_raised(
    make_runtime, api: Api, stack, stripe, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    from checkout.workers import PauseSwitch
    from tests.integration.test_dlq_processor import emitted_metrics

    # Given a capture due in 60 s, and both workers paused (nothing fails, nothing raises)
    runtime = make_runtime()
    runtime.__dict__["pause_switch"] = PauseSwitch("paused-workers", fetch=lambda _: "all")
    session = open_session(api)
    stripe.inject("capture", status=500, times=1)
    confirm(api, session["session_id"])
    capsys.readouterr()

    # When two hours pass with the workers invoked but paused
    clock.advance(7200)
    assert run_worker("capture_retry")["paused"] is True
    assert run_worker("compensation")["paused"] is True

    # Then the metric shows the order's wait past its due time: about two hours, above the alarm's 1800 s
    [overdue] = emitted_metrics(capsys.readouterr().out)["OldestOrderOverdueSeconds"]
    assert 7200 - 61 - 5 <= overdue <= 7200
