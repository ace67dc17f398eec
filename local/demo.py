"""`make demo`: every failure scenario of the remediation plan, driven over HTTP against the local stack."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import boto3
import httpx
from boto3.dynamodb.types import TypeDeserializer

DEFAULT_URL = "http://127.0.0.1:3000"
FINAL_STATES = {"CAPTURED", "COMPENSATED", "DECLINED", "AUTH_FAILED"}
_DESERIALIZE = TypeDeserializer()


class Skipped(Exception):
    """A step needs a piece the template does not have yet; the scenario stops there and says why."""


class Failed(Exception):
    """The system did not do what the scenario expects; the scenario stops there."""


@dataclass
class Answer:
    """One HTTP exchange, as the client saw it."""

    method: str
    path: str
    status: int
    body: Any
    seconds: float

    @property
    def code(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("error") or self.body.get("status") or "")
        return ""


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    """What one scenario did and saw; the demo prints it as a table and the e2e tests assert on it."""

    key: str
    title: str
    seen: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    orders: dict[str, str] = field(default_factory=dict)  # order_id -> customer_id
    reservations: dict[str, str] = field(default_factory=dict)  # order_id -> reservation_id
    paths: dict[str, list[str]] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    ledger: dict[str, Counter[str]] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    invariants: list[Check] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks + self.invariants)

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAILED"
        if self.skipped:
            return "SKIPPED (partly run)" if self.seen else "SKIPPED"
        return "PASSED"

    def answer(self, method: str, path: str, *, status: int | None = None) -> Answer:
        """The last answer to `method path`, optionally with that status."""
        for answer in reversed(self.answers):
            if answer.method == method and answer.path.startswith(path) and status in (None, answer.status):
                return answer
        raise KeyError(f"no {method} {path} answer{'' if status is None else f' with {status}'}")


@dataclass(frozen=True)
class StackInfo:
    api: str
    moto: str
    payment: str
    warehouse: str
    region: str
    parameters: dict[str, str]
    resources: dict[str, dict[str, str]]
    functions: list[dict[str, Any]]
    # Seconds before a failed message comes back (the stack's override, else the template's).
    visibility_seconds: float
    # DynamoDB Local's endpoint (the tables); moto serves the other services.
    dynamodb: str = ""

    def parameter(self, name: str, default: float) -> float:
        try:
            return float(self.parameters[name])
        except (KeyError, ValueError):
            return default

    def function(self, folder: str) -> dict[str, Any] | None:
        return next((f for f in self.functions if folder in (f["folder"], f["logical_id"])), None)


class AlertsInbox:
    """An SQS queue subscribed to the alerts topic on moto, as an operator's pager integration would be."""

    def __init__(self, info: StackInfo) -> None:
        self._sqs = _aws("sqs", info)
        name = f"demo-alerts-inbox-{uuid.uuid4().hex[:8]}"
        self.url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        topic = info.resources["AlertsTopic"]["Ref"]
        _aws("sns", info).subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        self.seen: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        while True:
            messages = self._sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return list(self.seen)
            for message in messages:
                envelope = json.loads(message["Body"])
                alert = json.loads(envelope["Message"])
                alert["subject"] = envelope.get("Subject")
                self.seen.append(alert)
                self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


def _aws(service: str, info: StackInfo) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=info.dynamodb or info.moto if service == "dynamodb" else info.moto,
        region_name=info.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


class LocalApi:
    """The local stack over HTTP: the public API, the admin API, /_local/ and the fakes' control endpoints."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.info = self._info()
        self.payment = httpx.Client(base_url=self.info.payment, timeout=timeout)
        self.warehouse = httpx.Client(base_url=self.info.warehouse, timeout=timeout)
        self.inbox = AlertsInbox(self.info)
        self._dynamodb = _aws("dynamodb", self.info)
        self._sqs = _aws("sqs", self.info)

    def _info(self) -> StackInfo:
        body = self.http.get("/_local/stack").raise_for_status().json()
        return StackInfo(
            api=body["api"],
            moto=body["moto"],
            payment=body["payment"],
            warehouse=body["warehouse"],
            region=body["region"],
            parameters=body["parameters"],
            resources=body["resources"],
            functions=body["functions"],
            visibility_seconds=float(body.get("visibility_timeout_override") or 180),
            dynamodb=body.get("dynamodb") or "",
        )

    def close(self) -> None:
        for client in (self.http, self.payment, self.warehouse):
            client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        started = time.monotonic()
        response = self.http.request(method, path, **kwargs)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return Answer(method, path, response.status_code, body, time.monotonic() - started)

    # ---- local control ---------------------------------------------------------------------------

    def require(self, folder: str, why: str) -> None:
        if self.info.function(folder) is None:
            raise Skipped(f"needs functions/{folder} in template.yaml ({why}); it is not there yet")

    def run(self, function: str) -> dict[str, Any]:
        response = self.http.post(f"/_local/run/{function}")
        body: dict[str, Any] = response.json()
        if response.status_code >= 400 and "runs" not in body:
            raise Failed(f"POST /_local/run/{function} -> {response.status_code} {body}")
        return body

    def advance_clock(self, seconds: float) -> None:
        self.http.post("/_local/clock", json={"advance_seconds": seconds}).raise_for_status()

    def fault(self, provider: str, **spec: Any) -> None:
        self._fake(provider).post("/_faults", json=spec).raise_for_status()

    def clear_faults(self) -> None:
        for provider in ("payment", "warehouse"):
            self._fake(provider).delete("/_faults").raise_for_status()

    def challenge(self, intent_id: str, outcome: str) -> dict[str, Any]:
        """What the customer does in the 3-D Secure challenge: "complete" or "fail" (the fake's test-only endpoint)."""
        body: dict[str, Any] = (
            self.payment.post(f"/_3ds/{intent_id}", json={"outcome": outcome}).raise_for_status().json()
        )
        return body

    def search_lag(self, seconds: float | None = None) -> float:
        """The fake Stripe's search lag (seconds of the stack's clock); sets it when `seconds` is given."""
        if seconds is None:
            answer = self.payment.get("/_settings")
        else:
            answer = self.payment.post("/_settings", json={"search_lag_seconds": seconds})
        return float(answer.raise_for_status().json()["search_lag_seconds"])

    def provider_log(self, provider: str) -> dict[str, list[dict[str, Any]]]:
        body: dict[str, list[dict[str, Any]]] = self._fake(provider).get("/_ledger").raise_for_status().json()
        return body

    def _fake(self, provider: str) -> httpx.Client:
        return {"payment": self.payment, "warehouse": self.warehouse}[provider]

    # ---- state an invariant checker reads (the tables on DynamoDB Local) -----------------------------------

    def records_of(self, order_id: str) -> list[dict[str, Any]]:
        table = self.info.resources["FailedCompensationsTable"]["Ref"]
        items = self._dynamodb.query(
            TableName=table,
            IndexName="order-index",
            KeyConditionExpression="order_id = :o",
            ExpressionAttributeValues={":o": {"S": order_id}},
        )["Items"]
        return [_plain(item) for item in items]

    def all_orders(self) -> list[dict[str, Any]]:
        table = self.info.resources["OrdersTable"]["Ref"]
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self._dynamodb.scan(**kwargs)
            found += [_plain(i) for i in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return [o for o in found if o.get("kind") == "order"]
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def record_statuses(self) -> Counter[str]:
        """How many failed-compensation records the stack holds, by status."""
        table = self.info.resources["FailedCompensationsTable"]["Ref"]
        statuses: Counter[str] = Counter()
        pages = self._dynamodb.get_paginator("scan").paginate(
            TableName=table, ProjectionExpression="#s", ExpressionAttributeNames={"#s": "status"}
        )
        for page in pages:
            statuses.update(item["status"]["S"] for item in page["Items"])
        return statuses

    def queue_depth(self, logical_id: str) -> int:
        url = self.info.resources[logical_id]["QueueUrl"]
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def redrive(self) -> tuple[str, int]:
        """Moves the DLQ's messages back to the failed-compensations queue as an operator does: with the
        project's `checkout-admin redrive-dlq` when it is installed, else by receive-and-send (what
        `aws sqs start-message-move-task` does on AWS; moto does not implement it)."""
        dlq = self.info.resources["FailedCompensationsDLQ"]["QueueUrl"]
        queue = self.info.resources["FailedCompensationsQueue"]["QueueUrl"]
        tool = Path(sys.executable).parent / "checkout-admin"
        # The script is declared in pyproject.toml before issue 4 brings the module it runs.
        if tool.exists() and importlib.util.find_spec("checkout.cli") is not None:
            command = [str(tool), "--endpoint-url", self.info.moto, "--region", self.info.region]
            command += ["--queue-url", queue, "--dlq-url", dlq, "redrive-dlq"]
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
            if done.returncode != 0:
                raise Failed(f"checkout-admin redrive-dlq exited {done.returncode}: {done.stderr.strip()[-500:]}")
            answer = json.loads(done.stdout)
            return "checkout-admin redrive-dlq", int(answer.get("moved", -1))
        moved = 0
        while True:
            messages = self._sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return "receive-and-send (checkout-admin is not installed)", moved
            for message in messages:
                self._sqs.send_message(QueueUrl=queue, MessageBody=message["Body"])
                self._sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
                moved += 1


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    value = {k: _DESERIALIZE.deserialize(v) for k, v in item.items()}
    plain: dict[str, Any] = json.loads(json.dumps(value, default=lambda d: int(d) if d == int(d) else float(d)))
    return plain


class Scenario:
    """One run of one scenario: helpers that call the stack and note what was seen."""

    def __init__(self, api: LocalApi, outcome: Outcome, *, delay_seconds: float) -> None:
        self.api = api
        self.out = outcome
        self.delay_seconds = delay_seconds
        info = api.info
        self.stale = info.parameter("StaleSagaSeconds", 120)
        self.backoff_max = info.parameter("CaptureBackoffMaxSeconds", 1800)
        self.capture_retries = int(info.parameter("CaptureMaxRetries", 5))
        self.compensation_retries = int(info.parameter("CompensationMaxRetries", 3))
        self.payment_timeout = info.parameter("PaymentTimeoutSeconds", 15)
        self.session_ttl = info.parameter("SessionTtlSeconds", 1800)
        self.search_lag = info.parameter("PaymentSearchLagSeconds", 3600)
        self._reservation = ""

    # ---- what the client does --------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.out.seen.append(text)

    def _record(self, answer: Answer, label: str | None = None) -> Answer:
        self.out.answers.append(answer)
        extra = f" ({answer.seconds:.1f} s)" if answer.seconds >= 1 else ""
        self.note(f"{label or f'{answer.method} {answer.path}'} -> {answer.status} {answer.code}{extra}".rstrip())
        return answer

    def open_session(self, *, payment_method: str = "pm_card_visa", amount: int = 2500) -> tuple[str, str]:
        customer = f"cus_demo_{self.out.key}_{uuid.uuid4().hex[:6]}"
        body = {
            "customer_id": customer,
            "currency": "usd",
            "items": [{"sku": "sku_demo_mug", "quantity": 1, "unit_amount": amount}],
            "payment_method": payment_method,
        }
        answer = self._record(self.api.call("POST", "/checkout/sessions", json=body))
        self.expect(answer.status == 201, "session opened (201)", answer)
        self._reservation = str(answer.body["reservation_id"])
        return str(answer.body["session_id"]), customer

    def confirm(self, session_id: str, customer: str, *, payment_method: str | None = None) -> Answer:
        body = {"payment_method": payment_method} if payment_method else None
        headers = {"X-Session-ID": session_id, "X-Customer-ID": customer}
        answer = self._record(self.api.call("POST", "/checkout/confirm", headers=headers, json=body))
        order_id = answer.body.get("order_id") if isinstance(answer.body, dict) else None
        if order_id and order_id not in self.out.orders:
            self.out.orders[order_id] = customer
            self.out.reservations[order_id] = self._reservation
        return answer

    def order(self, order_id: str) -> dict[str, Any]:
        customer = self.out.orders[order_id]
        answer = self.api.call("GET", f"/orders/{order_id}", headers={"X-Customer-ID": customer})
        if answer.status != 200:
            raise Failed(f"GET /orders/{order_id} -> {answer.status} {answer.body}")
        body: dict[str, Any] = answer.body
        return body

    def state(self, order_id: str) -> str:
        return str(self.order(order_id)["saga_state"])

    def admin(self, method: str, path: str, **kwargs: Any) -> Answer:
        return self._record(self.api.call(method, path, **kwargs), f"operator {method} {path}")

    def run(self, worker: str) -> dict[str, Any]:
        body = self.api.run(worker)
        for run in body.get("runs", []):
            summary = run.get("error") or _counts(run.get("result"))
            if "received" in run:
                summary = (
                    f"{run['received']} message(s), {run['deleted']} done, {len(run['failed_message_ids'])} failed"
                )
            self.note(f"run {worker} now -> {summary}")
        return body

    # ---- expectations ----------------------------------------------------------------------------

    def expect(self, ok: bool, what: str, detail: Any = "") -> None:
        text = detail if isinstance(detail, str) else _short(detail.body if isinstance(detail, Answer) else detail)
        self.out.checks.append(Check(what, bool(ok), "" if ok else text))
        if not ok:
            raise Failed(f"{what}: {text}")

    def expect_state(self, order_id: str, *states: str) -> str:
        state = self.state(order_id)
        self.expect(state in states, f"order {'/'.join(states)}", f"it is {state}")
        return state

    def drive(self, order_id: str, worker: str, targets: set[str], *, advance: float, rounds: int, why: str) -> str:
        """Age the order and run `worker` now, until the order is in one of `targets`."""
        self.api.require(worker, why)
        state = self.state(order_id)
        for _ in range(rounds):
            if state in targets:
                break
            if advance:
                self.api.advance_clock(advance)
            self.run(worker)
            state = self.state(order_id)
        self.expect(state in targets, f"{worker} moves the order to {'/'.join(sorted(targets))}", f"it is {state}")
        return state

    def wait(self, condition: Callable[[], Any], what: str, *, timeout: float) -> Any:
        end = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                self.out.checks.append(Check(what, True))
                return value
            if time.monotonic() > end:
                self.expect(False, what, f"not within {timeout:g} s")
            time.sleep(0.25)

    def ledger_of(self, order_id: str) -> Counter[str]:
        events = self.api.provider_log("payment")["ledger"]
        return Counter(e["op"] for e in events if e.get("order_id") == order_id)

    def alerts_for(self, order_id: str, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.api.inbox.read() if a.get("order_id") == order_id and a.get("kind") == kind]

    def record_of(self, order_id: str) -> dict[str, Any] | None:
        records = self.api.records_of(order_id)
        return records[0] if records else None


# ---- the scenarios -------------------------------------------------------------------------------


def happy_path(s: Scenario) -> None:
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    s.expect(answer.status == 201 and answer.code == "confirmed", "confirm answers 201 confirmed", answer)
    order_id = answer.body["order_id"]
    s.expect_state(order_id, "CAPTURED")
    s.expect(s.ledger_of(order_id)["captured"] == 1, "captured exactly once", s.ledger_of(order_id))


def declined_card(s: Scenario) -> None:
    session, customer = s.open_session(payment_method="pm_card_chargeDeclined")
    answer = s.confirm(session, customer)
    s.expect(answer.status == 402 and answer.code == "payment_declined", "confirm answers 402 payment_declined", answer)
    s.expect_state(answer.body["order_id"], "DECLINED")
    s.expect(s.ledger_of(answer.body["order_id"])["authorized"] == 0, "nothing held", "")
    again = s.confirm(session, customer, payment_method="pm_card_visa")
    s.expect(again.status == 201, "the session is open again: a new card confirms (201)", again)
    s.expect_state(again.body["order_id"], "CAPTURED")


def payment_delay(s: Scenario) -> None:
    # The delay must outlast the payment timeout, or there is nothing to recover.
    delay = max(s.delay_seconds, s.payment_timeout + 3)
    s.api.fault("payment", operation="authorize", delay=delay, times=1)
    s.note(f"payment provider: the next authorize answers after {delay:g} s")
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    limit = s.payment_timeout + 3
    s.expect(
        answer.status == 504 and answer.code == "payment_timeout" and answer.seconds < limit,
        f"confirm answers 504 payment_timeout within the {s.payment_timeout:g} s payment timeout",
        f"{answer.status} {answer.body} after {answer.seconds:.1f} s",
    )
    order_id = answer.body["order_id"]
    s.expect_state(order_id, "AUTH_UNKNOWN")
    # The late authorize still goes through at the provider: the hold recovery must find and void.
    s.wait(lambda: s.ledger_of(order_id)["authorized"] == 1, "the late authorize lands", timeout=delay + 10)
    s.drive(
        order_id, "compensation", {"COMPENSATED"}, advance=s.stale + 1, rounds=3, why="stale-saga recovery voids it"
    )
    ledger = s.ledger_of(order_id)
    s.expect(ledger["canceled"] == 1 and ledger["captured"] == 0, "the hold is voided, never captured", ledger)
    closed = s.confirm(session, customer)
    s.expect(closed.status == 409 and closed.code == "session_closed", "the session is closed (409)", closed)


def capture_recovers(s: Scenario) -> None:
    s.api.fault("payment", operation="capture", status=503, times=2)
    s.note("payment provider: the next 2 captures answer 503")
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    s.expect(answer.status == 202 and answer.code == "payment_pending", "confirm answers 202 payment_pending", answer)
    order_id = answer.body["order_id"]
    s.expect_state(order_id, "CAPTURE_PENDING")
    s.drive(
        order_id,
        "capture_retry",
        {"CAPTURED"},
        advance=s.backoff_max + 1,
        rounds=s.capture_retries + 2,
        why="the capture retry worker",
    )
    calls = [
        r
        for r in s.api.provider_log("payment")["requests"]
        if r["operation"] == "capture" and str(r["idempotency_key"]).startswith(f"{order_id}:capture")
    ]
    s.note(f"payment provider: {len(calls)} capture calls, {sum(r['status'] != 200 for r in calls)} failed")
    s.expect(len(calls) >= 2, "the capture was retried", f"{len(calls)} capture calls")
    s.expect(s.ledger_of(order_id)["captured"] == 1, "captured exactly once", s.ledger_of(order_id))
    s.expect(s.order(order_id)["status"] == "confirmed", "the order is confirmed", s.order(order_id))


def _capture_until_failed(s: Scenario, order_id: str) -> None:
    s.drive(
        order_id,
        "capture_retry",
        {"CAPTURE_FAILED", "COMPENSATING", "COMPENSATED", "COMPENSATION_FAILED"},
        advance=s.backoff_max + 1,
        rounds=s.capture_retries + 2,
        why="the capture retry worker gives up after CAPTURE_MAX_RETRIES",
    )


def capture_exhausted(s: Scenario) -> None:
    s.api.fault("payment", operation="capture", status=503)
    s.note("payment provider: every capture answers 503")
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    s.expect(answer.status == 202, "confirm answers 202 payment_pending", answer)
    order_id = answer.body["order_id"]
    s.api.require("capture_retry", "the capture retry worker")
    s.api.require("compensation", "the compensation worker")
    _capture_until_failed(s, order_id)
    s.drive(order_id, "compensation", {"COMPENSATED"}, advance=0, rounds=3, why="compensation voids and releases")
    ledger = s.ledger_of(order_id)
    s.expect(ledger["captured"] == 0 and ledger["canceled"] == 1, "never captured, voided once", ledger)
    s.expect(s.order(order_id)["status"] == "cancelled", "the order is cancelled", s.order(order_id))


def _into_failed_compensation(s: Scenario, *, dlq_before: int) -> tuple[str, dict[str, Any]]:
    """An order whose capture retries run out and whose void then fails: a failed-compensation record."""
    s.api.require("capture_retry", "the capture retry worker")
    s.api.require("compensation", "the compensation worker")
    s.api.fault("payment", operation="capture", status=503)
    s.api.fault("payment", operation="cancel", status=503)
    s.note("payment provider: every capture and every void answers 503")
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    s.expect(answer.status == 202, "confirm answers 202 payment_pending", answer)
    order_id = answer.body["order_id"]
    _capture_until_failed(s, order_id)
    s.run("compensation")
    # The order goes COMPENSATION_FAILED only once its record, message and alert all exist. The dlq_processor may
    # take the message at once and be the one publishing the alert; the order then stays COMPENSATING and due, and
    # the next recovery run (after STALE_SAGA_SECONDS) finds the record complete and moves it. The clock moves
    # only once that alert is marked sent: here minutes pass in an instant, and a jump past the alert's claim
    # (ALERT_CLAIM_SECONDS) while the processor is still publishing would let the next run publish it again,
    # which in real time takes a processor stalled for a minute between its publish and its mark.
    s.wait(lambda: (r := s.record_of(order_id)) is not None and r["alert_sent"], "the alert is sent", timeout=10)
    s.drive(order_id, "compensation", {"COMPENSATION_FAILED"}, advance=s.stale + 1, rounds=3, why="the void fails")
    record = s.wait(lambda: s.record_of(order_id), "a failed-compensation record is written", timeout=10)
    s.note(f"failed compensation {record['id']}: {record['operation_type']}, {record['status']}")
    alerts = s.wait(
        lambda: s.alerts_for(order_id, "compensation_failed"), "a compensation_failed alert arrives", timeout=10
    )
    s.note(f"alert: {alerts[0].get('subject')}")
    s.wait(
        lambda: (
            s.api.queue_depth("FailedCompensationsQueue") + s.api.queue_depth("FailedCompensationsDLQ") > dlq_before
        ),
        "a queue message carries it (waiting, in flight or in the DLQ)",
        timeout=10,
    )
    return order_id, record


def _until_exhausted(s: Scenario, order_id: str, record: dict[str, Any], *, dlq_before: int) -> dict[str, Any]:
    """The dlq_processor retries on each delivery (void still failing) until the record is `failed` and the
    queue's redrive policy has moved the message to the DLQ."""
    s.api.require("dlq_processor", "the failed-compensations queue consumer")
    timeout = (s.compensation_retries + 2) * (s.api.info.visibility_seconds + 2) + 10
    failed = s.wait(
        lambda: (r := s.record_of(order_id)) is not None and r["status"] == "failed" and r,
        f"dlq_processor retries {s.compensation_retries} times, then the record is failed",
        timeout=timeout,
    )
    s.wait(
        lambda: s.api.queue_depth("FailedCompensationsDLQ") > dlq_before, "the message is in the DLQ", timeout=timeout
    )
    s.note(f"record {record['id']}: failed after {failed.get('retry_count')} retries; message in the DLQ")
    s.wait(
        lambda: s.alerts_for(order_id, "compensation_exhausted"), "a compensation_exhausted alert arrives", timeout=10
    )
    return dict(failed)


def void_fails_into_dlq(s: Scenario) -> None:
    dlq_before = s.api.queue_depth("FailedCompensationsDLQ")
    order_id, record = _into_failed_compensation(s, dlq_before=dlq_before)
    _until_exhausted(s, order_id, record, dlq_before=dlq_before)
    s.api.require("admin", "the admin API")
    listed = s.admin("GET", "/admin/compensations", params={"status": "failed"})
    ids = [item["id"] for item in listed.body.get("items", [])] if isinstance(listed.body, dict) else []
    s.expect(listed.status == 200 and record["id"] in ids, "the operator sees it in the failed list", listed)
    s.api.clear_faults()
    s.note("payment provider: healthy again")
    retried = s.admin("POST", f"/admin/compensations/{record['id']}/retry")
    s.expect(retried.status == 202, "the operator's retry is accepted (202)", retried)
    s.wait(lambda: s.state(order_id) == "COMPENSATED", "the retried compensation completes", timeout=30)
    shown = s.admin("GET", f"/admin/compensations/{record['id']}")
    s.expect(shown.body.get("status") == "resolved", "the record is resolved", shown)
    ledger = s.ledger_of(order_id)
    s.expect(ledger["canceled"] == 1 and ledger["captured"] == 0, "voided exactly once, never captured", ledger)


def redrive_dlq(s: Scenario) -> None:
    dlq_before = s.api.queue_depth("FailedCompensationsDLQ")
    order_id, record = _into_failed_compensation(s, dlq_before=dlq_before)
    _until_exhausted(s, order_id, record, dlq_before=dlq_before)
    s.api.clear_faults()
    s.note("payment provider: healthy again")
    depth = s.api.queue_depth("FailedCompensationsDLQ")
    how, moved = s.api.redrive()
    s.note(f"operator redrives the DLQ ({depth} message(s)) with {how}: {moved} moved back to the queue")
    s.wait(lambda: s.state(order_id) == "COMPENSATED", "the redriven message completes the compensation", timeout=30)
    s.wait(
        lambda: (r := s.record_of(order_id)) is not None and r["status"] == "resolved",
        "the record is resolved",
        timeout=10,
    )
    s.wait(lambda: s.api.queue_depth("FailedCompensationsDLQ") == 0, "the DLQ is empty", timeout=10)
    ledger = s.ledger_of(order_id)
    s.expect(ledger["canceled"] == 1 and ledger["captured"] == 0, "voided exactly once, never captured", ledger)


def _three_ds_waiting(s: Scenario) -> tuple[str, str, str, str]:
    """A checkout with a card that needs 3-D Secure, answered 202 requires_action.

    Returns (session, customer, order, intent)."""
    session, customer = s.open_session(payment_method="pm_card_threeDSecure2Required")
    answer = s.confirm(session, customer)
    s.expect(
        answer.status == 202 and answer.code == "requires_action" and bool(answer.body.get("client_secret")),
        "confirm answers 202 requires_action with the client_secret for Stripe.js",
        answer,
    )
    order_id = answer.body["order_id"]
    s.expect_state(order_id, "AUTH_ACTION_REQUIRED")
    s.expect(s.ledger_of(order_id)["authorized"] == 0, "nothing is held before the challenge", s.ledger_of(order_id))
    # A client secret is "<intent id>_secret_<...>" (docs.stripe.com/api/payment_intents/object#client_secret).
    intent_id = str(answer.body["client_secret"]).split("_secret_")[0]
    return session, customer, order_id, intent_id


def three_ds_completed(s: Scenario) -> None:
    session, customer, order_id, intent_id = _three_ds_waiting(s)
    s.api.challenge(intent_id, "complete")
    s.note("customer completes the 3-D Secure challenge (Stripe.js handleNextAction)")
    answer = s.confirm(session, customer)
    s.expect(answer.status == 201 and answer.body["order_id"] == order_id, "confirm again answers 201", answer)
    s.expect_state(order_id, "CAPTURED")
    s.expect(s.ledger_of(order_id)["captured"] == 1, "captured exactly once", s.ledger_of(order_id))


def three_ds_failed(s: Scenario) -> None:
    session, customer, order_id, intent_id = _three_ds_waiting(s)
    s.api.challenge(intent_id, "fail")
    s.note("customer fails the 3-D Secure challenge")
    answer = s.confirm(session, customer)
    s.expect(answer.status == 402 and answer.code == "payment_declined", "confirm again answers 402", answer)
    s.expect_state(order_id, "DECLINED")
    again = s.confirm(session, customer, payment_method="pm_card_visa")
    s.expect(again.status == 201, "the session is open again: another card confirms (201)", again)


def three_ds_abandoned(s: Scenario) -> None:
    order_id = _three_ds_waiting(s)[2]
    s.note("customer leaves without completing the challenge")
    s.api.advance_clock(s.stale + 1)
    s.run("compensation")
    s.expect_state(order_id, "AUTH_ACTION_REQUIRED")
    s.drive(
        order_id,
        "compensation",
        {"COMPENSATED"},
        advance=s.session_ttl,
        rounds=2,
        why="recovery cancels an abandoned challenge once the session expires",
    )
    ledger = s.ledger_of(order_id)
    s.expect(ledger["canceled"] == 1 and ledger["authorized"] == 0, "the intent is canceled, nothing held", ledger)
    s.expect(s.record_of(order_id) is None, "no failed-compensation record", s.record_of(order_id))
    s.expect(s.alerts_for(order_id, "compensation_failed") == [], "no alert", "")


def authorize_unknown_search_lags(s: Scenario) -> None:
    normal = s.api.search_lag()
    s.api.search_lag(3600)
    s.api.fault("payment", operation="authorize", lose_response=True)
    s.note("payment provider incident: every authorize answer is lost, and search lags an hour")
    try:
        session, customer = s.open_session()
        answer = s.confirm(session, customer)
        s.expect(answer.status == 502, "confirm answers 502 payment_outcome_unknown", answer)
        order_id = answer.body["order_id"]
        s.expect(s.ledger_of(order_id)["authorized"] == 1, "the provider holds the amount", s.ledger_of(order_id))
        s.api.advance_clock(s.stale + 1)
        s.run("compensation")
        s.expect_state(order_id, "AUTH_UNKNOWN")
        s.note("recovery does not trust the empty search: the order stays due")
        s.api.clear_faults()
        s.note("payment provider: answers again; the index is still an hour behind")
        s.drive(
            order_id,
            "compensation",
            {"COMPENSATED"},
            advance=max(s.search_lag, 3600) + 1,
            rounds=2,
            why="recovery voids the hold once the search can be trusted",
        )
        ledger = s.ledger_of(order_id)
        s.expect(ledger["canceled"] == 1 and ledger["captured"] == 0, "the hold is voided, never captured", ledger)
    finally:
        s.api.search_lag(normal)


def capture_answer_lost(s: Scenario) -> None:
    s.api.require("capture_retry", "the capture retry worker")
    s.api.require("compensation", "the compensation worker")
    s.api.fault("payment", operation="capture", lose_response=True)
    s.api.fault("payment", operation="retrieve", status=503)
    s.note("payment provider: every capture answer is lost, and every read-back answers 503")
    session, customer = s.open_session()
    answer = s.confirm(session, customer)
    s.expect(answer.status == 202 and answer.code == "payment_pending", "confirm answers 202 payment_pending", answer)
    order_id = answer.body["order_id"]
    _capture_until_failed(s, order_id)
    keys = {
        r["idempotency_key"]
        for r in s.api.provider_log("payment")["requests"]
        if r["operation"] == "capture" and str(r["idempotency_key"]).startswith(f"{order_id}:")
    }
    s.expect(keys == {f"{order_id}:capture"}, "every retry re-sent the one capture key (no answer, no new key)", keys)
    s.api.clear_faults()
    s.note("payment provider: answers again")
    s.drive(order_id, "compensation", {"COMPENSATED"}, advance=0, rounds=3, why="compensation refunds the capture")
    ledger = s.ledger_of(order_id)
    s.expect(ledger["captured"] == 1 and ledger["refunded"] == 1, "captured once, refunded exactly once", ledger)
    s.expect(s.record_of(order_id) is None, "no failed-compensation record", s.record_of(order_id))


SCENARIOS: dict[str, tuple[str, Callable[[Scenario], None]]] = {
    "happy_path": ("Happy path: authorize, record, capture", happy_path),
    "declined_card": ("Declined card: 402, nothing held, the session opens again", declined_card),
    "payment_delay": ("Payment provider delays 20 s: 504 in time, the late hold voided by recovery", payment_delay),
    "capture_recovers": ("Capture fails, then recovers: retried, captured once", capture_recovers),
    "capture_exhausted": ("Capture fails until compensation: voided and released", capture_exhausted),
    "void_fails_into_dlq": (
        "Void fails: record, queue, alert; retries run out; the operator retries it through the admin API",
        void_fails_into_dlq,
    ),
    "redrive_dlq": ("Redrive of the DLQ: a parked compensation processed again and resolved", redrive_dlq),
    "three_ds_completed": ("3-D Secure completed: 202 requires_action, challenge passed, 201", three_ds_completed),
    "three_ds_failed": ("3-D Secure failed: 402, the session opens again", three_ds_failed),
    "three_ds_abandoned": ("3-D Secure abandoned: cancelled by recovery once the session expires", three_ds_abandoned),
    "authorize_unknown_search_lags": (
        "Authorize outcome unknown while search lags an hour: the hold is still voided",
        authorize_unknown_search_lags,
    ),
    "capture_answer_lost": (
        "Capture answer lost on every retry until compensation: refunded exactly once",
        capture_answer_lost,
    ),
}


# ---- running and checking ------------------------------------------------------------------------


def run_scenario(api: LocalApi, key: str, *, delay_seconds: float = 20.0) -> Outcome:
    title, steps = SCENARIOS[key]
    outcome = Outcome(key, title.replace("20 s", f"{delay_seconds:g} s"))
    scenario = Scenario(api, outcome, delay_seconds=delay_seconds)
    started = time.monotonic()
    api.clear_faults()
    converged = True
    try:
        steps(scenario)
    except Skipped as exc:
        outcome.skipped = str(exc)
        converged = False
    except Failed as exc:
        outcome.error = str(exc)
        converged = False
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        converged = False
    finally:
        api.clear_faults()
    try:
        collect(api, outcome)
        outcome.invariants = money_invariants(api, outcome, converged=converged)
    except Exception as exc:
        outcome.error = outcome.error or f"collecting state failed: {type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - started
    return outcome


def collect(api: LocalApi, outcome: Outcome) -> None:
    events = api.provider_log("payment")["ledger"]
    alerts = api.inbox.read()
    for order_id, customer in outcome.orders.items():
        answer = api.call("GET", f"/orders/{order_id}", headers={"X-Customer-ID": customer})
        if answer.status == 200:
            history = answer.body["history"]
            outcome.paths[order_id] = [h["to"] for h in history]
            outcome.states[order_id] = answer.body["saga_state"]
        outcome.ledger[order_id] = Counter(e["op"] for e in events if e.get("order_id") == order_id)
        outcome.records[order_id] = api.records_of(order_id)
    outcome.alerts = [a for a in alerts if a.get("order_id") in outcome.orders]


def money_invariants(api: LocalApi, outcome: Outcome, *, converged: bool) -> list[Check]:
    """ARCHITECTURE.md section 4, for this scenario's orders, from the tables and the providers' ledgers."""
    payment = api.provider_log("payment")["ledger"]
    released = {e["id"] for e in api.provider_log("warehouse")["ledger"] if e["op"] == "released"}
    orders = {o["order_id"]: o for o in api.all_orders() if o["order_id"] in outcome.orders}
    checks: list[Check] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        checks.append(Check(what, ok, "" if ok else detail))

    for order_id, order in orders.items():
        events = [e for e in payment if e.get("order_id") == order_id]
        records = outcome.records.get(order_id, [])
        open_records = [r for r in records if r.get("status") != "resolved"]
        captures = [e for e in events if e["op"] == "captured"]
        refunded = any(e["op"] == "refunded" for e in events)
        short = order_id[-8:]
        check(f"1. {short}: at most one capture", len(captures) <= 1, f"{len(captures)} captures")
        check(
            f"1. {short}: captured amount is the order total",
            all(e["amount"] == order["amount_total"] for e in captures),
            f"{[e['amount'] for e in captures]} vs {order['amount_total']}",
        )
        check(
            f"3. {short}: a capture belongs to a CAPTURED order",
            not captures or order["saga_state"] == "CAPTURED" or refunded or bool(open_records),
            f"captured but {order['saga_state']}",
        )
        if order["saga_state"] == "CAPTURED":
            check(f"3. {short}: CAPTURED means charged", len(captures) == 1, "confirmed without a capture")
        if converged:
            held = {e["id"] for e in events if e["op"] == "authorized"} - {
                e["id"] for e in events if e["op"] in ("captured", "canceled")
            }
            check(
                f"2. {short}: no orphaned hold",
                not held or bool(open_records),
                f"intent(s) {sorted(held)} still held, no open record",
            )
            reservation = outcome.reservations.get(order_id)
            if order["status"] == "cancelled" and reservation:
                check(
                    f"4. {short}: a cancelled order's stock is released",
                    reservation in released or bool(open_records),
                    f"reservation {reservation} still held",
                )
        for record in records:
            alerts = [
                a
                for a in outcome.alerts
                if a.get("compensation_id") == record["id"] and a["kind"] == "compensation_failed"
            ]
            check(f"5. {record['id']}: exactly one compensation_failed alert", len(alerts) == 1, f"{len(alerts)}")
    return checks


def stack_wide_invariants(api: LocalApi) -> list[Check]:
    """Invariants 1 and 3 over every order the stack holds, whoever made it."""
    payment = api.provider_log("payment")["ledger"]
    orders = {o["order_id"]: o for o in api.all_orders()}
    captures = Counter(e["order_id"] for e in payment if e["op"] == "captured")
    refunded = {e.get("order_id") for e in payment if e["op"] == "refunded"}
    twice = sorted(o for o, n in captures.items() if n > 1)
    stray = sorted(
        o
        for o in captures
        if o not in orders or (orders[o]["saga_state"] != "CAPTURED" and o not in refunded and not api.records_of(o))
    )
    return [
        Check(f"1. no order of the {len(orders)} captured twice", not twice, ", ".join(twice)),
        Check("3. every capture belongs to a CAPTURED order", not stray, ", ".join(stray)),
    ]


# ---- printing ------------------------------------------------------------------------------------


def render(outcome: Outcome, number: int) -> str:
    lines = [f"{number}. {outcome.title}", f"   {outcome.verdict} in {outcome.seconds:.1f} s"]
    if outcome.skipped:
        lines.append(f"   skipped from here: {outcome.skipped}")
    if outcome.error:
        lines.append(f"   ERROR: {outcome.error}")
    lines.append("   what the client and operator saw")
    lines += [f"     {text}" for text in outcome.seen] or ["     (nothing)"]
    lines.append("   saga path (order history)")
    for order_id in outcome.orders:
        path = _path(outcome.paths.get(order_id, ["?"]))
        lines.append(f"     {order_id}: {path}")
    headers = ["order", "authorized", "captured", "voided", "refunded", "declined", "records"]
    rows = []
    for order_id in outcome.orders:
        counts = outcome.ledger.get(order_id, Counter())
        records = outcome.records.get(order_id, [])
        rows.append(
            [
                order_id,
                str(counts["authorized"]),
                str(counts["captured"]),
                str(counts["canceled"]),
                str(counts["refunded"]),
                str(counts["declined"]),
                ", ".join(f"{r['id']} {r['status']}" for r in records) or "-",
            ]
        )
    lines.append("   provider ledger")
    lines += ["     " + row for row in _table(headers, rows)]
    lines.append("   money invariants")
    for inv in outcome.invariants:
        lines.append(f"     {'ok  ' if inv.ok else 'FAIL'} {inv.what}{'' if inv.ok else f': {inv.detail}'}")
    failed_checks = [c for c in outcome.checks if not c.ok]
    for c in failed_checks:
        lines.append(f"   expectation failed: {c.what}: {c.detail}")
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return out


def _counts(result: Any) -> str:
    """A worker's summary without its zeros: `due 1, captured 1, circuit closed`."""
    if not isinstance(result, dict):
        return _short(result)
    shown = [f"{k} {v}" for k, v in result.items() if k not in ("worker", "paused") and v not in (0, None, "", False)]
    return ("PAUSED; " if result.get("paused") else "") + (", ".join(shown) or "nothing to do")


def _path(states: list[str]) -> str:
    """AUTHORIZING -> CAPTURE_PENDING x3 -> CAPTURED: repeated steps (retries) counted, not repeated."""
    steps: list[list[Any]] = []
    for state in states:
        if steps and steps[-1][0] == state:
            steps[-1][1] += 1
        else:
            steps.append([state, 1])
    return " -> ".join(state if n == 1 else f"{state} x{n}" for state, n in steps)


def _short(value: Any, limit: int = 140) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- entry point ---------------------------------------------------------------------------------


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_local/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def self_started_stack(out: TextIO, log_path: Path) -> Iterator[str]:
    """A stack of our own, started as `make run` starts it but on free ports, its log in a file."""
    from local.stack_process import FREE_PORTS, StackProcess

    stack = StackProcess.start(log_path, *FREE_PORTS, "--schedule-period", "5", "--visibility-timeout-override", "2")
    try:
        print(f"started a local stack at {stack.url} (its log: {log_path})", file=out, flush=True)
        yield stack.url
    finally:
        stack.interrupt()


def main(argv: Sequence[str] | None = None, *, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"a running local stack (default {DEFAULT_URL})")
    parser.add_argument("--start", action="store_true", help="start a stack on free ports even if one answers")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--delay", type=float, default=20.0, help="the payment delay scenario's delay (default 20)")
    args = parser.parse_args(argv)
    if not args.start and answers(args.url):
        return _demo(args.url, args, out)
    if not args.start:
        print(f"no local stack answers at {args.url}; starting one on free ports", file=out, flush=True)
    log_path = Path(tempfile.gettempdir()) / f"checkout-demo-stack-{os.getpid()}.log"
    with self_started_stack(out, log_path) as url:
        return _demo(url, args, out)


def _demo(url: str, args: argparse.Namespace, out: TextIO) -> int:
    api = LocalApi(url)
    try:
        keys = args.only or list(SCENARIOS)
        print(f"demo against {url}: {len(keys)} scenario(s)\n", file=out, flush=True)
        outcomes = []
        for number, key in enumerate(keys, 1):
            outcome = run_scenario(api, key, delay_seconds=args.delay)
            outcomes.append(outcome)
            print(render(outcome, number) + "\n", file=out, flush=True)
        wide = stack_wide_invariants(api)
        print("summary", file=out)
        for number, outcome in enumerate(outcomes, 1):
            print(f"  {number}. {outcome.key:<22} {outcome.verdict}", file=out)
            if outcome.skipped:
                print(f"     {outcome.skipped}", file=out)
        for inv in wide:
            print(
                f"  {'ok  ' if inv.ok else 'FAIL'} stack-wide: {inv.what}{'' if inv.ok else f': {inv.detail}'}",
                file=out,
            )
        ok = all(o.passed for o in outcomes) and all(i.ok for i in wide)
        skipped = sum(1 for o in outcomes if o.skipped)
        verdict = "the money invariants held in every scenario" if ok else "FAILED: see above"
        if ok and skipped:
            verdict += f"; {skipped} scenario(s) skipped (partly or wholly): their pieces are not in template.yaml yet"
        print(f"\n{verdict}", file=out, flush=True)
        return 0 if ok else 1
    finally:
        api.close()


if __name__ == "__main__":
    raise SystemExit(main())
