"""A model-based chaos test (hypothesis RuleBasedStateMachine): confirms, provider faults, our own AWS failures and
crashes, worker runs, SQS deliveries, operator actions and clock moves in any order; the money invariants of
ARCHITECTURE.md section 4 after every step, and convergence once everything is healed.

`make test` runs a bounded, derandomized version (CHAOS_EXAMPLES, default 20; CHAOS_STEPS 20); `make chaos` runs
2,000 examples and prints the shrunk counter-example of a failure. Tables on DynamoDB Local, queues and topics on
in-process moto.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import hypothesis
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from hypothesis import HealthCheck, reproduce_failure, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test
from moto import mock_aws

from checkout.config import Settings
from checkout.operator_actions import CompensationResolved, QueueUnavailable
from checkout.runtime import AWS_CONFIG, Runtime, use_runtime
from local.dynamodb_local import DynamoDBLocal
from local.fake_payment import FakeStripe
from local.fake_warehouse import FakeWarehouse
from local.template_stack import TemplateStack
from tests.apigw import http_event
from tests.aws_faults import AwsFaults, Crash
from tests.conftest import Clock, LambdaContext
from tests.invariants import assert_money_invariants, scan
from tests.sqs import sqs_event

FINAL = {"CAPTURED", "COMPENSATED", "DECLINED", "AUTH_FAILED"}
OPERATOR = "arn:aws:iam::123456789012:user/chaos-operator"
CART = {"currency": "usd", "items": [{"sku": "sku_mug", "quantity": 1, "unit_amount": 1250}]}
# Timeouts short enough that a provider delay costs about a second of real time.
PAYMENT_TIMEOUT = 0.7
SLOW = 0.9

SETTINGS = settings(
    max_examples=int(os.environ.get("CHAOS_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("CHAOS_STEPS", "20")),
    derandomize=os.environ.get("CHAOS_RANDOM", "") == "",
    deadline=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class World:
    """Everything one test run shares across examples; `reset()` empties it between examples."""

    stack: TemplateStack
    stripe: FakeStripe
    warehouse: FakeWarehouse
    clock: Clock
    runtime: Runtime
    dynamodb: AwsFaults
    sqs: AwsFaults
    sns: AwsFaults
    inbox_url: str
    alerts: list[dict[str, Any]] = field(default_factory=list)
    reader: Any = None  # one DynamoDB client for the checks (building a client per read costs more than the read)
    in_flight: list[tuple[str, str]] = field(default_factory=list)  # (queue url, receipt handle)

    def orders(self) -> list[dict[str, Any]]:
        return [i for i in scan(self.stack, "OrdersTable", self.reader) if i.get("kind") == "order"]

    def records(self) -> list[dict[str, Any]]:
        return scan(self.stack, "FailedCompensationsTable", self.reader)

    @property
    def queue_url(self) -> str:
        return str(self.stack.physical["FailedCompensationsQueue"]["Ref"])

    @property
    def dlq_url(self) -> str:
        return str(self.stack.physical["FailedCompensationsDLQ"]["Ref"])

    def heal(self) -> None:
        for faults in (self.dynamodb, self.sqs, self.sns):
            faults.heal()
        self.stripe.clear_faults()
        self.warehouse.clear_faults()

    def reset(self) -> None:
        self.heal()
        self.wait_for_providers()
        self.stripe.reset()
        self.warehouse.reset()
        client = boto3.client("dynamodb")
        for table, key in (("OrdersTable", "pk"), ("FailedCompensationsTable", "id")):
            name = self.stack.physical[table]["Ref"]
            for item in scan(self.stack, table, self.reader):
                client.delete_item(TableName=name, Key={key: {"S": item[key]}})
        visibility_expires(self)
        sqs = boto3.client("sqs")
        for url in (self.queue_url, self.dlq_url, self.inbox_url):
            # Not PurgeQueue: SQS allows one purge a minute per queue.
            while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                for message in messages:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        self.alerts.clear()

    def wait_for_providers(self) -> None:
        """Delayed requests still sleeping at a fake finish (their effect lands) before anyone looks."""
        end = time.monotonic() + 10
        while (self.stripe.in_flight or self.warehouse.in_flight) and time.monotonic() < end:
            time.sleep(0.05)

    def describe(self) -> str:
        """The world after a failed check: every order's history, record, intent and provider request, so a
        counter-example printed by `make chaos` can be read without replaying it."""
        lines = ["--- orders"]
        for order in self.orders():
            lines.append(
                f"{order['order_id']} {order['saga_state']} auth={order.get('authorization_id')} "
                f"res={order.get('reservation_id')} keys={order.get('key_attempts')} "
                f"comp={order.get('compensation_id')}"
            )
            lines += [f"    {h.get('from', '')} -> {h['to']}: {h.get('reason', '')[:300]}" for h in order["history"]]
        lines.append("--- failed compensations")
        for record in self.records():
            fields = ("status", "operation", "retry_count", "queued", "alert_sent", "key_attempts", "error_message")
            lines.append(f"{record['id']} " + " ".join(f"{k}={record.get(k)}" for k in fields))
        lines.append("--- intents")
        for intent in self.stripe.intents.values():
            lines.append(f"{intent['id']} {intent['status']} order={intent['metadata'].get('order_id')}")
        for name, fake in (("stripe", self.stripe), ("warehouse", self.warehouse)):
            lines.append(f"--- {name} requests")
            lines += [
                f"{r['method']} {r['path']} key={r['idempotency_key']} -> {r['status']}"
                f"{' replayed' if r['replayed'] else ''}{' lost' if r['lost'] else ''} fault={r['fault']}"
                for r in fake.requests
            ]
        return "\n".join(lines)

    def read_alerts(self) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        while messages := sqs.receive_message(QueueUrl=self.inbox_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                self.alerts.append(json.loads(json.loads(message["Body"])["Message"]))
                sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=message["ReceiptHandle"])
        return list(self.alerts)


WORLD: World | None = None
# What the examples of one run went through, printed at its end (hypothesis's own statistics do not reach a
# state machine run inside a test): examples converged, orders, records, records only a person could fix.
TALLY: Counter[str] = Counter()


class FrozenClock(Clock):
    """The test's clock, frozen: only the rules move it, so an example replays the same (hypothesis shrinks it)."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.time()

    def __call__(self) -> float:
        return self._start + self.offset


def world() -> World:
    assert WORLD is not None
    return WORLD


@pytest.fixture
def chaos_world(monkeypatch: pytest.MonkeyPatch, dynamodb_local: DynamoDBLocal) -> Iterator[World]:
    """The template's tables on DynamoDB Local (AWS's emulator: conditions, transactions, indexes and item limits
    as DynamoDB applies them, and safe under concurrent confirms), queues and topics on in-process moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_local.url)
    # Stripe's clock is ours: its search index lags in the same seconds the rules move (a fake on wall-clock time
    # would still lag when the saga's clock is hours on and trusts an empty search).
    clock = FrozenClock()
    tables = TemplateStack(stack_name="chaos", dynamodb_endpoint_url=dynamodb_local.url).deploy_tables()
    try:
        with mock_aws(), FakeStripe(clock=clock) as stripe, FakeWarehouse() as warehouse:
            stack = TemplateStack(dynamodb_endpoint_url=dynamodb_local.url).deploy_services()
            stack.physical.update(tables.physical)
            yield from _world(stack, stripe, warehouse, clock, monkeypatch)
    finally:
        tables.delete_tables()


def _world(
    stack: TemplateStack,
    stripe: FakeStripe,
    warehouse: FakeWarehouse,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    global WORLD
    sqs = boto3.client("sqs", config=AWS_CONFIG)
    inbox = sqs.create_queue(QueueName="chaos-alerts-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns").subscribe(TopicArn=stack.physical["AlertsTopic"]["Ref"], Protocol="sqs", Endpoint=arn)
    env = stack.environment("ConfirmCheckoutFunction")
    env.update(
        PAYMENT_API_BASE_URL=stripe.url,
        PAYMENT_API_KEY="sk_test_local",
        WAREHOUSE_API_BASE_URL=warehouse.url,
        PAYMENT_TIMEOUT_SECONDS=str(PAYMENT_TIMEOUT),
        WAREHOUSE_TIMEOUT_SECONDS=str(PAYMENT_TIMEOUT),
        CAPTURE_MAX_RETRIES="1",
        RECOVERY_MAX_ATTEMPTS="3",
        WORKER_CONCURRENCY="1",
        # Two shards still put orders in several due-index partitions (and the unsharded one of earlier
        # releases); sixteen would only make every worker run read eighteen partitions of a handful of orders.
        DUE_INDEX_SHARDS="2",
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dynamodb = boto3.client("dynamodb", config=AWS_CONFIG)
    sns = boto3.client("sns", config=AWS_CONFIG)
    runtime = Runtime(Settings.from_environ(env), clock=clock, dynamodb=dynamodb, sqs=sqs, sns=sns)
    use_runtime(runtime)
    WORLD = World(
        stack=stack,
        stripe=stripe,
        warehouse=warehouse,
        clock=clock,
        runtime=runtime,
        dynamodb=AwsFaults(dynamodb),
        sqs=AwsFaults(sqs),
        sns=AwsFaults(sns),
        inbox_url=inbox,
        reader=boto3.client("dynamodb"),
    )
    try:
        yield WORLD
    finally:
        WORLD.heal()
        WORLD.wait_for_providers()
        WORLD = None


# --- what the actors do --------------------------------------------------------------------------


def survive(action: Callable[[], Any]) -> Any:
    """Run one actor's step; a crash or an AWS error it lets out ends that step, as a dying Lambda would."""
    try:
        return action()
    except Crash:
        return None
    except (ClientError, BotoCoreError):
        return None


def api(method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    from functions.confirm_checkout.app import lambda_handler

    result = lambda_handler(http_event(method, path, **kwargs), LambdaContext(timeout_seconds=28))
    return int(result["statusCode"]), json.loads(result["body"])


def run_worker(name: str) -> None:
    import importlib

    handler = importlib.import_module(f"functions.{name}.app").lambda_handler
    survive(lambda: handler({}, LambdaContext(timeout_seconds=180, function_name=f"chaos-{name}")))


def deliver_once(w: World) -> int:
    """Lambda's event source mapping: one batch, successes deleted, failures (or a crashed run) left in flight."""
    from functions.dlq_processor.app import lambda_handler

    sqs = boto3.client("sqs")
    messages = sqs.receive_message(QueueUrl=w.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
        "Messages", []
    )
    if not messages:
        return 0
    arn = w.stack.physical["FailedCompensationsQueue"].get("Arn", "arn:aws:sqs:us-east-1:123456789012:queue")
    try:
        response = lambda_handler(sqs_event(messages, arn), LambdaContext(timeout_seconds=30))
        failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
    except Crash:
        failed = {m["MessageId"] for m in messages}
    for message in messages:
        if message["MessageId"] in failed:
            w.in_flight.append((w.queue_url, message["ReceiptHandle"]))
        else:
            sqs.delete_message(QueueUrl=w.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return len(messages)


def visibility_expires(w: World) -> None:
    sqs = boto3.client("sqs")
    for url, handle in w.in_flight:
        with contextlib.suppress(ClientError):  # deleted or moved meanwhile
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    w.in_flight.clear()


def redrive(w: World) -> None:
    """What an operator does after the DLQ alarm: move every parked message back to the source queue."""
    sqs = boto3.client("sqs")
    while messages := sqs.receive_message(QueueUrl=w.dlq_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            sqs.send_message(QueueUrl=w.queue_url, MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=w.dlq_url, ReceiptHandle=message["ReceiptHandle"])


def fix_by_hand(w: World, record: dict[str, Any]) -> bool:
    """The runbook's manual fix before resolving a record: cancel (or refund) the payment, release the stock.

    True once the providers show it fixed: the runbook has the operator check before resolving, so a fix that
    failed (the provider still faulty) leaves the record open for a later try, as a person would.
    """
    import httpx

    order = next((o for o in w.orders() if o["order_id"] == record["order_id"]), None)
    headers = {"Authorization": "Bearer sk_test_local"}
    with contextlib.suppress(httpx.HTTPError):
        for intent in w.stripe.intents.values():
            if intent["metadata"].get("order_id") != record["order_id"]:
                continue
            if intent["status"] in ("requires_capture", "requires_action"):
                httpx.post(f"{w.stripe.url}/v1/payment_intents/{intent['id']}/cancel", headers=headers)
            elif intent["status"] == "succeeded" and not _refunded(w, intent["id"]):
                httpx.post(
                    f"{w.stripe.url}/v1/refunds",
                    data={"payment_intent": intent["id"], "metadata[order_id]": record["order_id"]},
                    headers=headers,
                )
        if order and order.get("reservation_id"):
            httpx.post(f"{w.warehouse.url}/v1/reservations/{order['reservation_id']}/release", json={})
    return _fixed(w, record["order_id"], order)


def _refunded(w: World, intent_id: str) -> bool:
    return any(
        r["payment_intent"] == intent_id and r["status"] in ("pending", "succeeded") for r in w.stripe.refunds.values()
    )


def _fixed(w: World, order_id: str, order: dict[str, Any] | None) -> bool:
    for intent in w.stripe.intents.values():
        if intent["metadata"].get("order_id") != order_id:
            continue
        if intent["status"] in ("requires_capture", "requires_action"):
            return False
        if intent["status"] == "succeeded" and not _refunded(w, intent["id"]):
            return False
    reservation_id = order.get("reservation_id") if order else None
    reservation = w.warehouse.reservations.get(reservation_id or "")
    return reservation is None or reservation["status"] == "released"


# --- the model -----------------------------------------------------------------------------------

STRIPE_FAULTS = st.sampled_from(
    [
        {"status": 402},  # authorize: the card is declined
        {"status": 500},
        {"status": 502},
        {"status": 429},
        {"lose_response": True},
        {"delay": SLOW},
    ]
)
TIMES = st.sampled_from([1, 3, None])
# Capture and cancel twice as likely: they lead to compensation, the paths this test is about.
PAYMENT_OPERATIONS = ["authorize", "capture", "capture", "cancel", "cancel", "retrieve", "search", "refund"]
WAREHOUSE_FAULTS = st.sampled_from([{"status": 500}, {"status": 503}, {"lose_response": True}, {"delay": SLOW}])
# Every write our code makes, the SQS send and the SNS publish (and the reads, below).
# (a fault plan, below, is armed by an actor's step just before it acts: a step is a confirm or a run *under* faults)
AWS_TARGETS = st.sampled_from(
    [
        ("dynamodb", "TransactWriteItems", "orders"),  # create an order
        ("dynamodb", "UpdateItem", "orders"),  # transitions, claims, releases
        ("dynamodb", "PutItem", "orders"),  # sessions
        ("dynamodb", "PutItem", "ledger"),  # a failed-compensation record
        ("dynamodb", "UpdateItem", "ledger"),  # claims, alert flags, retries, resolutions
        ("sqs", "SendMessage", ""),
        ("sns", "Publish", ""),
        # and the reads an actor decides on: a worker's due-index query, an order or a record read
        ("dynamodb", "Query", "orders"),
        ("dynamodb", "GetItem", "orders"),
        ("dynamodb", "GetItem", "ledger"),
    ]
)
AWS_FAULT_KINDS = st.sampled_from(["throttle", "internal", "lose", "retry", "crash_before", "crash_after"])
FAULT = st.one_of(
    st.tuples(st.just("payment"), st.sampled_from(PAYMENT_OPERATIONS), STRIPE_FAULTS, TIMES),
    st.tuples(st.just("warehouse"), st.just("release"), WAREHOUSE_FAULTS, TIMES),
    st.tuples(st.just("aws"), AWS_TARGETS, AWS_FAULT_KINDS, st.sampled_from([1, 2, 6])),
)
FAULT_PLAN = st.lists(FAULT, max_size=3)


class CheckoutChaos(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.w = world()
        self.w.reset()
        # A publish that may have gone through unseen (lost answer, crash after it, its "sent" mark refused):
        # the only way to a second, identical alert (docs/decisions.md). Without one, exactly one per record.
        self.ambiguous_alert = False

    # sessions and confirms ----------------------------------------------------------------------
    @rule(
        target=sessions,
        n=st.integers(0, 3),
        # 3-D Secure: the confirm answers 202 requires_action; the customer completes or fails the challenge,
        # comes back, or walks away (recovery cancels the intent once the session has expired).
        card=st.sampled_from(
            ["pm_card_visa", "pm_card_visa", "pm_card_chargeDeclined", "pm_card_threeDSecure2Required"]
        ),
        how=st.sampled_from(["once", "once", "twice_at_once", "client_retry"]),
        plan=FAULT_PLAN,
    )
    def customer_checks_out(self, n: int, card: str, how: str, plan: list[Any]) -> Any:
        customer = f"cus_{n}"
        body = {"customer_id": customer, "payment_method": card, **CART}
        answer = survive(lambda: api("POST", "/checkout/sessions", body=body, iam=True))
        if answer is None or answer[0] != 201:
            return multiple()
        session = (answer[1]["session_id"], customer)
        self.arm(plan)
        if how == "twice_at_once":
            threads = [threading.Thread(target=self.customer_confirms_again, args=(session,)) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            self.customer_confirms_again(session)
            if how == "client_retry":
                self.customer_confirms_again(session)
        return session

    @rule(session=sessions, plan=FAULT_PLAN)
    def customer_comes_back(self, session: tuple[str, str], plan: list[Any]) -> None:
        self.arm(plan)
        self.customer_confirms_again(session)

    @rule(session=sessions, succeed=st.booleans())
    def customer_answers_the_challenge(self, session: tuple[str, str], succeed: bool) -> None:
        """Stripe.js handleNextAction in the customer's browser: the challenge of the session's waiting intent."""
        orders = {o["order_id"] for o in self.w.orders() if o["session_id"] == session[0]}
        for intent in list(self.w.stripe.intents.values()):
            if intent["status"] == "requires_action" and intent["metadata"].get("order_id") in orders:
                with contextlib.suppress(ValueError):  # cancelled by recovery meanwhile
                    self.w.stripe.complete_challenge(intent["id"], succeed=succeed)

    def customer_confirms_again(self, session: tuple[str, str]) -> None:
        session_id, customer = session
        headers = {"X-Session-ID": session_id, "X-Customer-ID": customer}
        survive(lambda: api("POST", "/checkout/confirm", headers=headers))

    # faults: each lasts for 1 or 3 calls, or until `heal` (outages, not only blips) ----------------
    def arm(self, plan: list[tuple[str, Any, Any, Any]]) -> None:
        for family, where, fault, times in plan:
            if family == "payment":
                self.payment_fault(where, fault, times)
            elif family == "warehouse":
                self.w.warehouse.inject("release", times=times, **fault)
            else:
                self.aws_fault(where, fault, times)

    def payment_fault(self, operation: str, fault: dict[str, Any], times: int | None) -> None:
        if fault == {"status": 402}:
            if operation == "authorize":  # the card is declined (a business answer, not a fault)
                self.w.stripe.inject("authorize", decline=True, times=1)
        else:
            self.w.stripe.inject(operation, times=times, **fault)

    def aws_fault(self, where: tuple[str, str, str], kind: str, times: int) -> None:
        service, operation, table = where
        if service == "sqs":
            self._arm(self.w.sqs, operation, "crash_after" if kind == "retry" else kind, lambda _: True, times)
            return
        if service == "sns":
            self._arm(self.w.sns, operation, "throttle" if kind == "retry" else kind, lambda _: True, times)
            if kind in ("lose", "crash_after"):
                self.ambiguous_alert = True  # the alert went out unseen
            return
        name = self.w.stack.physical["OrdersTable" if table == "orders" else "FailedCompensationsTable"]["Ref"]

        def on_table(params: dict[str, Any]) -> bool:
            if "TransactItems" in params:
                return any(name in json.dumps(item) for item in params["TransactItems"])
            return params.get("TableName") == name

        self._arm(self.w.dynamodb, operation, kind, on_table, times)
        if table == "ledger" and operation == "UpdateItem" and kind != "retry":
            self.ambiguous_alert = True  # it may be the write marking a published alert as sent

    @rule()
    def heal(self) -> None:
        self.w.heal()

    @staticmethod
    def _arm(faults: AwsFaults, operation: str, kind: str, when: Callable[[dict[str, Any]], bool], times: int) -> None:
        if kind == "throttle":
            faults.fail(operation, code="ThrottlingException", when=when, times=times)
        elif kind == "internal":
            faults.fail(operation, code="InternalServerError", when=when, times=times)
        elif kind == "lose":
            faults.lose_answer(operation, when=when, times=times)
        elif kind == "retry":
            faults.retry_after_success(operation, when=when, times=times)
        else:
            faults.crash(operation, after=kind == "crash_after", when=when, times=times)

    # actors -------------------------------------------------------------------------------------
    @rule(
        seconds=st.sampled_from([30, 61, 601, 1801]),
        workers=st.sampled_from([("capture_retry",), ("compensation",), ("capture_retry", "compensation")]),
        plan=FAULT_PLAN,
    )
    def time_passes_and_workers_run(self, seconds: int, workers: tuple[str, ...], plan: list[Any]) -> None:
        self.arm(plan)
        # A real request ends within its timeout, long before minutes pass: the clock never jumps over one
        # still sleeping at a fake provider (an authorize landing after recovery trusted an empty search).
        self.w.wait_for_providers()
        self.w.clock.advance(seconds)
        visibility_expires(self.w)
        for name in workers:
            run_worker(name)

    @rule(duplicate=st.booleans(), plan=FAULT_PLAN)
    def sqs_delivers(self, duplicate: bool, plan: list[Any]) -> None:
        self.arm(plan)
        if duplicate:
            found = self.w.records()
            if found:
                survive(lambda: self.w.runtime.ledger.send_message(found[-1]["id"]))
        deliver_once(self.w)

    @rule(action=st.sampled_from(["redrive", "retry", "resolve"]), pick=st.integers(0, 5), plan=FAULT_PLAN)
    def operator_acts(self, action: str, pick: int, plan: list[Any]) -> None:
        self.arm(plan)
        if action == "redrive":
            redrive(self.w)
            return
        open_ = [r for r in self.w.records() if r["status"] != "resolved"]
        if not open_:
            return
        record = open_[pick % len(open_)]
        if action == "retry":
            with contextlib.suppress(CompensationResolved, QueueUnavailable):
                survive(lambda: self.w.runtime.operator_actions.retry(record["id"], by=OPERATOR))
            return
        # The runbook: fix it at the provider by hand first, then resolve the record.
        self.w.wait_for_providers()
        if not fix_by_hand(self.w, record):
            return
        with contextlib.suppress(CompensationResolved):
            survive(lambda: self.w.runtime.operator_actions.resolve(record["id"], by=OPERATOR, note="fixed"))

    # invariants ---------------------------------------------------------------------------------
    @invariant()
    def money_is_safe(self) -> None:
        try:
            self._money_is_safe()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.w.describe()}") from None

    def _money_is_safe(self) -> None:
        w = self.w
        alerts, order_items, record_items = w.read_alerts(), w.orders(), w.records()
        assert_money_invariants(
            w.stack,
            w.stripe,
            w.warehouse,
            converged=False,
            settling=True,
            order_items=order_items,
            record_items=record_items,
        )
        self._alerts_are_one_per_record(alerts, record_items, complete_only=True)
        by_id = {r["id"]: r for r in record_items}
        for order in order_items:
            if order["saga_state"] == "COMPENSATION_FAILED":
                # Never a dead end: its record exists, was queued and alerted before the order said so.
                record = by_id.get(order.get("compensation_id", ""))
                assert record is not None, f"{order['order_id']} COMPENSATION_FAILED without a record"
                assert record["queued"], record
                assert record["alert_sent"], record
            elif order["saga_state"] not in FINAL:
                # Every other non-final order is on the due-index, so some actor will look again.
                assert order.get("work_queue"), order
                assert order.get("due_at") is not None, order
            assert len(order["history"]) <= 40, f"{order['order_id']} history keeps growing"

    def _alerts_are_one_per_record(
        self, alerts: list[dict[str, Any]], record_items: list[dict[str, Any]], *, complete_only: bool
    ) -> None:
        failed = [a for a in alerts if a["kind"] == "compensation_failed"]
        per_record = Counter(a["compensation_id"] for a in failed)
        for record in record_items:
            count = per_record[record["id"]]
            if record.get("alert_sent") or not complete_only:
                assert count >= 1, f"{record['id']}: its alert was never published"
            if not self.ambiguous_alert:
                assert count <= 1, f"{record['id']}: {count} compensation_failed alerts"
            same = {json.dumps(a, sort_keys=True) for a in failed if a["compensation_id"] == record["id"]}
            assert len(same) <= 1, f"{record['id']}: differing alerts {same}"

    # convergence --------------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            self._converges()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.w.describe()}") from None

    def _converges(self) -> None:
        w = self.w
        w.heal()
        w.wait_for_providers()
        self._run_until_settled()
        # What the system cannot fix by itself waits for a person: COMPENSATION_FAILED, its record complete
        # (queued and alerted), and a cause no automatic retry may get past. Anything else must have settled.
        order_items, record_items = w.orders(), w.records()
        by_order = {o["order_id"]: o for o in order_items}
        waiting = [r for r in record_items if r["status"] != "resolved"]
        for record in waiting:
            order = by_order.get(record["order_id"], {})
            assert order.get("saga_state") == "COMPENSATION_FAILED", f"{record['id']} open, order {order}"
            assert record["queued"], f"{record['id']} waits for a person without its message"
            assert record["alert_sent"], f"{record['id']} waits for a person unalerted"
            assert self._only_a_person_can_fix(record), f"{record['id']} open after healing: {record}"
        # The runbook: fix it at the provider, then resolve the record; the saga then settles the rest.
        for record in waiting:
            assert fix_by_hand(w, record), f"{record['id']}: the providers refuse the manual fix"
            w.runtime.operator_actions.resolve(record["id"], by=OPERATOR, note="fixed by hand after healing")
        if waiting:
            self._run_until_settled()
        order_items, record_items = w.orders(), w.records()
        stuck = {o["order_id"]: o["saga_state"] for o in order_items if o["saga_state"] not in FINAL}
        assert not stuck, f"not converged after healing: {stuck}"
        assert all(r["status"] == "resolved" for r in record_items), record_items
        assert_money_invariants(
            w.stack, w.stripe, w.warehouse, converged=True, order_items=order_items, record_items=record_items
        )
        # A record resolved before it was complete (its order never entered COMPENSATION_FAILED) is not alerted
        # afterwards: the money is safe, nobody has to act (docs/decisions.md); every other has its one alert.
        self._alerts_are_one_per_record(w.read_alerts(), record_items, complete_only=True)
        TALLY.update(examples=1, orders=len(order_items), records=len(record_items), by_hand=len(waiting))
        TALLY["three_d_secure"] += sum(o["payment_method"] == "pm_card_threeDSecure2Required" for o in order_items)
        if os.environ.get("CHAOS_PROGRESS"):
            print(
                f"chaos example passed: {len(order_items)} orders, {len(record_items)} records, "
                f"{len(waiting)} resolved by hand",
                file=sys.stderr,
            )

    def _run_until_settled(self) -> None:
        """Hours pass with everything healthy: both schedules, the queue drained, the DLQ redriven by an operator."""
        w = self.w
        for _ in range(10):
            w.clock.advance(1801)
            visibility_expires(w)
            run_worker("capture_retry")
            run_worker("compensation")
            for _ in range(5):
                if not deliver_once(w):
                    break
                visibility_expires(w)
            redrive(w)
            w.wait_for_providers()
            settled = all(o["saga_state"] in FINAL for o in w.orders())
            if settled and all(r["status"] == "resolved" for r in w.records()):
                return

    def _only_a_person_can_fix(self, record: dict[str, Any]) -> bool:
        """A refund has one key (ARCHITECTURE.md section 4): once Stripe stored a 5xx under it, every retry
        replays that error, and only a person can refund. No other step is left without an automatic way out."""
        refund_key = f"{record['order_id']}:refund"
        stored_error = any(
            r["idempotency_key"] == refund_key and not r["lost"] and (r["status"] or 0) >= 500
            for r in self.w.stripe.requests
        )
        return stored_error and "refund" in record.get("error_message", "")


def test_money_stays_safe_and_everything_converges_whatever_fails(
    chaos_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    machine: type[CheckoutChaos] = CheckoutChaos
    if blob := os.environ.get("CHAOS_REPRODUCE"):
        # `make chaos CHAOS_REPRODUCE=<blob>`: replay the counter-example hypothesis printed with a failure.
        machine = reproduce_failure(hypothesis.__version__, blob)(type("ReproducedChaos", (CheckoutChaos,), {}))
    TALLY.clear()
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)
    finally:
        with capsys.disabled():
            print(
                f"\nchaos: {TALLY['examples']} examples converged, {TALLY['orders']} orders "
                f"({TALLY['three_d_secure']} with 3-D Secure), {TALLY['records']} failed-compensation records, "
                f"{TALLY['by_hand']} of them a refund only a person could fix"
            )
