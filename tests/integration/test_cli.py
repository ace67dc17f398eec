"""checkout-admin, run in-process against moto (and botocore's Stubber where moto lacks an SQS call)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from checkout.cli import main as checkout_admin
from tests.integration.conftest import FailedOrder, message_for, record_of, void_by_hand
from tests.invariants import assert_money_invariants
from tests.sqs import EventSourceMapping, peek_bodies, queue_depth

FailCompensation = Callable[..., FailedOrder]
OPERATOR = "alice@example.com"


def resource_options(stack) -> list[str]:
    """The local-stack way of naming the resources: explicit options instead of stack outputs."""
    return [
        "--orders-table",
        stack.physical["OrdersTable"]["Ref"],
        "--compensations-table",
        stack.physical["FailedCompensationsTable"]["Ref"],
        "--queue-url",
        stack.physical["FailedCompensationsQueue"]["Ref"],
        "--dlq-url",
        stack.physical["FailedCompensationsDLQ"]["Ref"],
    ]


@pytest.fixture
def cli(stack, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, Any]]:
    """Runs `checkout-admin <args>`; returns its exit code and its parsed JSON (stdout, or stderr on failure)."""

    def run(*args: str, operator: str | None = OPERATOR, environ: dict[str, str] | None = None) -> tuple[int, Any]:
        capsys.readouterr()
        who = ["--operator", operator] if operator else []
        code = checkout_admin([*resource_options(stack), *who, *args], environ=environ or {})
        out, err = capsys.readouterr()
        return code, json.loads(out if code == 0 else err.splitlines()[-1])

    return run


def test_list_and_show_print_json_for_jq(cli, fail_compensation: FailCompensation) -> None:
    # Given two failed compensations
    first, second = fail_compensation("cus_1"), fail_compensation("cus_2")

    # When the operator lists them one per page, and shows one
    code, page = cli("list", "--status", "pending", "--limit", "1")
    _, rest = cli("list", "--status", "pending", "--limit", "1", "--cursor", page["next_cursor"])
    _, shown = cli("show", first.compensation_id)

    # Then the output is the admin API's JSON
    assert code == 0
    assert [r["id"] for r in page["items"] + rest["items"]] == [first.compensation_id, second.compensation_id]
    assert rest["next_cursor"] is None
    assert shown["id"] == first.compensation_id
    assert shown["status"] == "pending"


def test_show_of_an_unknown_record_fails_with_a_json_error(cli) -> None:
    code, error = cli("show", "fc_nope")

    assert code == 1
    assert error["error"] == "compensation_not_found"


def test_retry_requeues_and_records_the_operator(
    cli, fail_compensation: FailCompensation, dlq_processor: EventSourceMapping, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a record whose automatic retries ran out
    failed = fail_compensation()
    stripe.inject("cancel", status=500)
    dlq_processor.drain()
    stripe.clear_faults()

    # When the operator retries it from the command line
    code, record = cli("retry", failed.compensation_id, "--note", "provider recovered")

    # Then it is queued again with their name on it, and the processor resolves it
    assert code == 0
    assert record["status"] == "pending"
    assert record["actions"][-1] | {"at": None} == {
        "action": "retry",
        "by": OPERATOR,
        "note": "provider recovered",
        "at": None,
    }
    assert dlq_processor.deliver().bodies == [message_for(failed.compensation_id)]
    assert record_of(stack, failed.compensation_id)["status"] == "resolved"
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_resolve_and_order_from_the_command_line(
    cli, fail_compensation: FailCompensation, stack, stripe, warehouse, alerts_inbox
) -> None:
    # Given a failed void the operator cancelled at the provider by hand
    failed = fail_compensation()
    void_by_hand(stripe, failed.authorization_id)

    # When they resolve it with a note, then read the order
    code, record = cli("resolve", failed.compensation_id, "--note", "cancelled in the dashboard")
    _, order = cli("order", failed.order_id)

    # Then the record is resolved by them and the order is COMPENSATED, with its history and record
    assert code == 0
    assert record["status"] == "resolved"
    assert record["resolved_by"] == OPERATOR
    assert order["saga_state"] == "COMPENSATED"
    assert order["history"][-1]["to"] == "COMPENSATED"
    assert [r["status"] for r in order["compensations"]] == ["resolved"]
    # And the dashboard's resolution time counts it, as for a resolve through the admin API
    [metric] = boto3.client("cloudwatch").list_metrics(
        Namespace="Checkout", MetricName="CompensationResolutionSeconds"
    )["Metrics"]
    assert metric["Dimensions"] == [{"Name": "service", "Value": "checkout"}]
    # And resolving again is refused
    code, error = cli("resolve", failed.compensation_id, "--note", "again")
    assert (code, error["error"]) == (1, "compensation_resolved")
    assert_money_invariants(stack, stripe, warehouse, converged=True, alerts=alerts_inbox())


def test_resolve_needs_a_note(cli, fail_compensation: FailCompensation, stack) -> None:
    failed = fail_compensation()

    missing, usage = cli("resolve", failed.compensation_id)
    blank, refused = cli("resolve", failed.compensation_id, "--note", "  ")

    assert (missing, usage["error"]) == (2, "usage")
    assert (blank, refused["error"]) == (1, "validation_error")
    assert record_of(stack, failed.compensation_id)["status"] == "pending"


def test_the_operator_is_the_iam_caller_when_not_named(cli, fail_compensation: FailCompensation) -> None:
    failed = fail_compensation()

    code, record = cli("retry", failed.compensation_id, operator=None)

    assert code == 0
    assert record["actions"][-1]["by"] == boto3.client("sts").get_caller_identity()["Arn"]


@pytest.mark.filterwarnings("ignore:Tried to parse AWS")
def test_resource_names_come_from_the_stack_outputs(stack, fail_compensation: FailCompensation, capsys) -> None:
    # Given a deployed stack whose outputs name the resources (as template.yaml's Outputs do)
    outputs = {
        "OrdersTableName": stack.physical["OrdersTable"]["Ref"],
        "FailedCompensationsTableName": stack.physical["FailedCompensationsTable"]["Ref"],
        "FailedCompensationsQueueUrl": stack.physical["FailedCompensationsQueue"]["Ref"],
        "FailedCompensationsDLQUrl": stack.physical["FailedCompensationsDLQ"]["Ref"],
    }
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName="checkout-saga-dev", TemplateBody=json.dumps(template))
    failed = fail_compensation()
    capsys.readouterr()

    # When the operator names only the stack
    code = checkout_admin(["--stack-name", "checkout-saga-dev", "show", failed.compensation_id], environ={})

    # Then the record is found through the outputs
    assert code == 0
    assert json.loads(capsys.readouterr().out)["id"] == failed.compensation_id


def test_an_unknown_stack_is_a_clear_error(capsys) -> None:
    from moto import mock_aws

    with mock_aws():
        code = checkout_admin(["--stack-name", "no-such-stack", "list"], environ={})

    assert code == 1
    assert json.loads(capsys.readouterr().err)["error"] == "stack_not_found"


# --- redrive ---------------------------------------------------------------------------------------


def test_redrive_under_moto_falls_back_to_receive_and_send(cli, stack) -> None:
    # Given two messages parked in the DLQ (moto has no StartMessageMoveTask)
    dlq = stack.physical["FailedCompensationsDLQ"]["Ref"]
    for n in range(2):
        boto3.client("sqs").send_message(QueueUrl=dlq, MessageBody=message_for(f"fc_{n}"))

    # When the operator redrives the DLQ
    code, result = cli("redrive-dlq")

    # Then both are back on the source queue and the DLQ is empty
    assert code == 0
    assert result["method"] == "receive_and_send"
    assert result["moved"] == 2
    assert result["source_arn"] == stack.physical["FailedCompensationsDLQ"]["Arn"]
    assert result["destination_arn"] == stack.physical["FailedCompensationsQueue"]["Arn"]
    assert queue_depth(dlq) == 0
    assert sorted(json.dumps(b) for b in peek_bodies(stack.physical["FailedCompensationsQueue"]["Ref"])) == sorted(
        message_for(f"fc_{n}") for n in range(2)
    )


class StubbedSession:
    """A boto3 session whose SQS client is botocore-stubbed (moto has no StartMessageMoveTask)."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs

    def client(self, service: str, **_: Any) -> Any:
        assert service == "sqs", service
        return self.sqs


DLQ_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/checkout-saga-FailedCompensationsDLQ-abc"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/checkout-saga-FailedCompensationsQueue-abc"
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:checkout-saga-FailedCompensationsDLQ-abc"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:checkout-saga-FailedCompensationsQueue-abc"


def stubbed_sqs() -> tuple[Any, Stubber]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    stubber = Stubber(sqs)
    for url, arn in ((DLQ_URL, DLQ_ARN), (QUEUE_URL, QUEUE_ARN)):
        stubber.add_response(
            "get_queue_attributes",
            {"Attributes": {"QueueArn": arn}},
            {"QueueUrl": url, "AttributeNames": ["QueueArn"]},
        )
    return sqs, stubber


def redrive(sqs: Any, *extra: str) -> int:
    return checkout_admin(
        ["--queue-url", QUEUE_URL, "--dlq-url", DLQ_URL, "redrive-dlq", *extra],
        session=StubbedSession(sqs),
        environ={},
    )


def test_redrive_in_aws_starts_a_message_move_task_from_the_dlq_to_its_source(capsys) -> None:
    # Given SQS that implements StartMessageMoveTask
    sqs, stubber = stubbed_sqs()
    stubber.add_response(
        "start_message_move_task",
        {"TaskHandle": "eyJ0YXNrSWQiOiJ0YXNrLTEifQ"},
        {"SourceArn": DLQ_ARN, "DestinationArn": QUEUE_ARN, "MaxNumberOfMessagesPerSecond": 5},
    )

    # When the operator redrives at five messages a second
    with stubber:
        code = redrive(sqs, "--max-per-second", "5")

    # Then one move task from the DLQ to the source queue was started, and its handle printed
    assert code == 0
    stubber.assert_no_pending_responses()
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "start_message_move_task"
    assert result["task_handle"] == "eyJ0YXNrSWQiOiJ0YXNrLTEifQ"
    assert (result["source_arn"], result["destination_arn"]) == (DLQ_ARN, QUEUE_ARN)


def test_redrive_against_moto_server_falls_back_on_its_html_500(capsys) -> None:
    # Given the local stack's moto server, which answers StartMessageMoveTask with an HTML 500 page
    sqs, stubber = stubbed_sqs()
    stubber.add_client_error(
        "start_message_move_task",
        service_error_code="500",
        service_message="<!doctype html>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>",
        http_status_code=500,
    )
    stubber.add_response(
        "receive_message",
        {"Messages": []},
        {"QueueUrl": DLQ_URL, "MaxNumberOfMessages": 10, "VisibilityTimeout": ANY, "MessageAttributeNames": ["All"]},
    )

    with stubber:
        code = redrive(sqs)

    assert code == 0
    stubber.assert_no_pending_responses()
    assert json.loads(capsys.readouterr().out) | {"source_arn": None, "destination_arn": None} == {
        "method": "receive_and_send",
        "moved": 0,
        "source_arn": None,
        "destination_arn": None,
    }


def test_redrive_refused_by_aws_is_reported_not_worked_around(capsys) -> None:
    # Given an operator without sqs:StartMessageMoveTask
    sqs, stubber = stubbed_sqs()
    stubber.add_client_error("start_message_move_task", service_error_code="AccessDenied", http_status_code=403)

    # When they redrive
    with stubber:
        code = redrive(sqs)

    # Then the refusal is reported, and no message was touched by a fallback
    assert code == 1
    stubber.assert_no_pending_responses()
    assert json.loads(capsys.readouterr().err)["error"] == "aws_error"


@pytest.mark.e2e
def test_against_the_local_stacks_moto_server_list_and_redrive_work_over_http(capsys) -> None:
    from moto.server import ThreadedMotoServer

    from local.template_stack import TemplateStack

    # Given the template's resources on a moto server at a free 127.0.0.1 port, and a message in its DLQ
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        stack = TemplateStack(endpoint_url=endpoint).deploy()
        dlq = stack.physical["FailedCompensationsDLQ"]["Ref"]
        boto3.client("sqs", endpoint_url=endpoint).send_message(QueueUrl=dlq, MessageBody=message_for("fc_1"))
        options = ["--endpoint-url", endpoint, *resource_options(stack), "--operator", OPERATOR]
        capsys.readouterr()

        # When the operator lists and redrives through --endpoint-url
        listed = checkout_admin([*options, "list"], environ={})
        listing = json.loads(capsys.readouterr().out)
        redriven = checkout_admin([*options, "redrive-dlq"], environ={})
        result = json.loads(capsys.readouterr().out)

        # Then both answer, and the redrive fell back on moto server's HTML 500 for StartMessageMoveTask
        assert (listed, listing) == (0, {"items": [], "next_cursor": None})
        assert redriven == 0
        assert (result["method"], result["moved"]) == ("receive_and_send", 1)
        sqs = boto3.client("sqs", endpoint_url=endpoint)
        [moved] = sqs.receive_message(QueueUrl=stack.physical["FailedCompensationsQueue"]["Ref"])["Messages"]
        assert moved["Body"] == message_for("fc_1")
    finally:
        server.stop()
