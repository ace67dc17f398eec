"""`make run` as a user meets it: what it prints, what it serves from template.yaml, a taken port, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest

from local.demo import LocalApi
from local.stack_process import FREE_PORTS, ROOT, StackProcess
from local.template_stack import load_template
from tests.e2e.conftest import FAST

pytestmark = pytest.mark.e2e

TEMPLATE = load_template()
CREATED_TYPES = {
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::SNS::Topic",
    "AWS::SecretsManager::Secret",
    "AWS::SSM::Parameter",
}


def of_type(*kinds: str) -> set[str]:
    return {name for name, res in TEMPLATE["Resources"].items() if res["Type"] in kinds}


def test_every_function_route_and_resource_comes_from_the_template(local_api: LocalApi) -> None:
    info = local_api.info

    assert {f["logical_id"] for f in info.functions} == of_type("AWS::Serverless::Function")
    assert set(info.resources) == of_type(*CREATED_TYPES)
    template_routes = {
        f"{event['Properties']['Method'].upper()} {event['Properties']['Path']}"
        for name in of_type("AWS::Serverless::Function")
        for event in (TEMPLATE["Resources"][name]["Properties"].get("Events") or {}).values()
        if event["Type"] == "HttpApi"
    }
    served = {t["route"] for f in info.functions for t in f["triggers"] if t["type"] == "HttpApi"}
    assert served == template_routes


def test_the_queue_keeps_the_templates_redrive_policy(local_api: LocalApi) -> None:
    info = local_api.info
    sqs = boto3.client(
        "sqs", endpoint_url=info.moto, region_name=info.region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    attributes = sqs.get_queue_attributes(
        QueueUrl=info.resources["FailedCompensationsQueue"]["QueueUrl"], AttributeNames=["RedrivePolicy"]
    )["Attributes"]

    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == info.resources["FailedCompensationsDLQ"]["Arn"]
    assert policy["maxReceiveCount"] == int(info.parameters["CompensationMaxRetries"])


def test_functions_get_the_template_environment_pointed_at_the_local_services(local_stack: StackProcess) -> None:
    stack = httpx.get(f"{local_stack.url}/_local/stack").json()

    assert stack["parameters"]["PaymentApiBaseUrl"] == stack["payment"]
    assert stack["parameters"]["WarehouseApiBaseUrl"] == stack["warehouse"]
    # An unknown order is the handler's own 404 (the route exists), not the front's.
    order = httpx.get(f"{local_stack.url}/orders/ord_missing", headers={"X-Customer-ID": "cus_1"})
    assert order.status_code == 404
    assert order.json()["error"] == "order_not_found"


def test_running_a_function_now(local_api: LocalApi, local_stack: StackProcess) -> None:
    unknown = httpx.post(f"{local_stack.url}/_local/run/nope")
    http_only = httpx.post(f"{local_stack.url}/_local/run/confirm_checkout")

    assert unknown.status_code == 404
    assert unknown.json()["error"] == "function_not_found"
    assert http_only.status_code == 409
    assert http_only.json()["error"] == "not_runnable"
    runnable = [f for f in local_api.info.functions if any(t["type"] != "HttpApi" for t in f["triggers"])]
    for function in runnable:
        answer = httpx.post(f"{local_stack.url}/_local/run/{function['folder']}", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["runs"]


def test_the_banner_says_what_runs_where_and_warns_that_iam_is_not_enforced(local_stack: StackProcess) -> None:
    banner = local_stack.log().split("ready:")[0]

    assert local_stack.url in banner
    for what in ("moto (AWS APIs)", "fake payment", "fake warehouse", "POST /_faults"):
        assert what in banner
    assert "HTTP POST /checkout/confirm" in banner
    assert "WARNING: IAM authorization is NOT enforced locally" in banner


def test_each_invocation_is_one_log_line(local_stack: StackProcess) -> None:
    httpx.get(f"{local_stack.url}/orders/ord_log_line", headers={"X-Customer-ID": "cus_1"})

    deadline = time.monotonic() + 10
    while "GET /orders/ord_log_line" not in local_stack.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    (line,) = [x for x in local_stack.log().splitlines() if "GET /orders/ord_log_line" in x]
    assert "ConfirmCheckoutFunction" in line
    assert "-> 404" in line
    assert line.endswith(" ms")


def test_a_taken_port_fails_with_a_clear_message_and_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    # Given a stack on free ports
    first = StackProcess.start(tmp_path / "first.log", *FREE_PORTS, *FAST)
    try:
        port = first.url.rsplit(":", 1)[1]
        # When a second one asks for the first one's front port
        second = StackProcess.start(tmp_path / "second.log", *FREE_PORTS[2:], "--port", port, wait_ready=False)
        assert second.process.wait(60) == 2
        # Then it says which port, what for, and how to choose another
        message = second.log()
        assert f"port {port} on 127.0.0.1 is already in use" in message
        assert "--port" in message
        assert httpx.get(f"{first.url}/_local/health").status_code == 200
    finally:
        # And Ctrl-C stops the first one cleanly
        assert first.interrupt() == 0
    assert "stopped" in first.log()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(port)))


def test_make_demo_starts_its_own_stack_when_none_answers(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # Its own session, so a hung demo and the stack it started are stopped together.
    demo = subprocess.Popen(
        [sys.executable, "-m", "local.demo", "--url", nobody, "--only", "happy_path"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

    assert demo.returncode == 0, output
    assert "starting one on free ports" in output
    assert "PASSED" in output
    assert "provider ledger" in output
    assert "authorized  captured  voided" in output


def test_enabled_schedules_fire_by_themselves_on_the_local_period(
    local_api: LocalApi, local_stack: StackProcess
) -> None:
    scheduled = [
        f["logical_id"]
        for f in local_api.info.functions
        if any(t["type"] in ("Schedule", "ScheduleV2") and t["enabled"] for t in f["triggers"])
    ]
    if not scheduled:
        pytest.skip("template.yaml has no enabled schedule")

    deadline = time.monotonic() + 30
    fired: set[str] = set()
    while time.monotonic() < deadline and fired != set(scheduled):
        lines = [line for line in local_stack.log().splitlines() if " schedule rate(" in line]
        fired = {name for name in scheduled if any(f" {name} " in line for line in lines)}
        time.sleep(0.5)

    assert fired == set(scheduled)
