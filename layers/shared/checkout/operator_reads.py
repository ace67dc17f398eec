"""What the operator console reads besides the records: the providers' live state of a record, and the plan's KPIs.

Reads only: nothing here writes a table, queues a message or calls a provider's write endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from checkout.compensation_retries import seconds_between
from checkout.failed_compensations import FailedCompensation, FailedCompensationLedger, OperationType, RecordStatus
from checkout.observability import logger
from checkout.operator_actions import CompensationNotFound
from checkout.orders import Order, OrderStore
from checkout.payments import PaymentError
from checkout.saga import iso
from checkout.warehouse import Reservation, WarehouseError

# A console read waits at most this long for each provider, one after the other: both fit in the admin
# function's 10 s Timeout with the DynamoDB reads.
PROVIDER_READ_TIMEOUT_SECONDS = 3.0
# The windows the KPI page offers, in seconds.
KPI_WINDOWS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}


@runtime_checkable
class IntentReader(Protocol):
    def retrieve_with_charge(self, intent_id: str, *, timeout: float) -> dict[str, Any]: ...


@runtime_checkable
class ReservationReader(Protocol):
    def get(self, reservation_id: str, *, timeout: float) -> Reservation: ...


class StepState(StrEnum):
    DONE = "done"  # the provider shows the step happened: nothing left to retry for it
    TO_DO = "to_do"  # the provider shows it has not happened and still can
    IMPOSSIBLE = "impossible"  # it can no longer happen (a captured intent cannot be voided)
    UNKNOWN = "unknown"  # no id to ask about, or the provider did not answer


def _epoch_iso(seconds: Any) -> str | None:
    return iso(float(seconds)) if isinstance(seconds, int | float) else None


def _intent_view(raw: dict[str, Any], now: float) -> dict[str, Any]:
    """The intent's fields an operator decides on, and its charge's capture deadline (Stripe's capture_before)."""
    charge = raw.get("latest_charge") if isinstance(raw.get("latest_charge"), dict) else {}
    card = ((charge or {}).get("payment_method_details") or {}).get("card") or {}
    capture_before = card.get("capture_before")
    view = {
        "id": raw.get("id"),
        "status": raw.get("status"),
        "amount": raw.get("amount"),
        "amount_capturable": raw.get("amount_capturable"),
        "amount_received": raw.get("amount_received"),
        "currency": raw.get("currency"),
        "created_at": _epoch_iso(raw.get("created")),
        "canceled_at": _epoch_iso(raw.get("canceled_at")),
        "cancellation_reason": raw.get("cancellation_reason"),
        "charge": {
            "id": charge.get("id"),
            "status": charge.get("status"),
            "captured": charge.get("captured"),
            "amount_captured": charge.get("amount_captured"),
            "amount_refunded": charge.get("amount_refunded"),
            "refunded": charge.get("refunded"),
        }
        if charge
        else None,
        "capture_before": _epoch_iso(capture_before),
        # Only a hold still waiting for capture has a deadline that matters.
        "capture_seconds_left": int(capture_before - now)
        if isinstance(capture_before, int | float) and raw.get("status") == "requires_capture"
        else None,
    }
    return view


def _void_state(intent: dict[str, Any] | None) -> tuple[StepState, str]:
    if intent is None:
        return StepState.UNKNOWN, "the payment provider's state is unknown"
    status = intent.get("status")
    if status == "canceled":
        return StepState.DONE, f"Stripe shows {intent['id']} canceled: nothing is held"
    if status == "succeeded":
        return StepState.IMPOSSIBLE, (
            f"Stripe shows {intent['id']} captured (succeeded): a void can no longer work; refund it in the "
            "Stripe dashboard, then resolve this record with a note"
        )
    if status == "requires_payment_method":
        return StepState.DONE, f"Stripe shows {intent['id']} without a hold (requires_payment_method)"
    return StepState.TO_DO, f"Stripe shows {intent['id']} {status}: the hold is still there"


def _refund_state(intent: dict[str, Any] | None) -> tuple[StepState, str]:
    if intent is None:
        return StepState.UNKNOWN, "the payment provider's state is unknown"
    charge = intent.get("charge") or {}
    received = intent.get("amount_received") or 0
    refunded = charge.get("amount_refunded") or 0
    if intent.get("status") == "succeeded" and received and refunded >= received:
        return StepState.DONE, f"Stripe shows {intent['id']} refunded in full"
    if intent.get("status") != "succeeded":
        return StepState.DONE, f"Stripe shows {intent['id']} {intent.get('status')}: nothing was charged"
    return StepState.TO_DO, f"Stripe shows {intent['id']} charged, {refunded} of {received} refunded"


def _release_state(reservation: dict[str, Any] | None) -> tuple[StepState, str]:
    if reservation is None:
        return StepState.UNKNOWN, "the warehouse's state is unknown"
    if reservation.get("status") == "held":
        return StepState.TO_DO, f"the warehouse shows {reservation['id']} still held"
    return StepState.DONE, f"the warehouse shows {reservation['id']} {reservation.get('status')}: nothing is held"


class ProviderStates:
    """A record beside what the payment provider and the warehouse show for it now."""

    def __init__(
        self,
        *,
        ledger: FailedCompensationLedger,
        store: OrderStore,
        payments: Any,
        warehouse: Any,
        clock: Callable[[], float],
        timeout: float = PROVIDER_READ_TIMEOUT_SECONDS,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._payments = payments if isinstance(payments, IntentReader) else None
        self._warehouse = warehouse if isinstance(warehouse, ReservationReader) else None
        self._clock = clock
        self._timeout = timeout

    def of(self, compensation_id: str) -> dict[str, Any]:
        record = self._ledger.get(compensation_id)
        if record is None:
            raise CompensationNotFound(f"no failed compensation {compensation_id}")
        order = self._store.get_order(record.order_id)
        intent_id = record.authorization_id or (order.authorization_id if order else None)
        payment = self._payment(intent_id)
        reservation = self._reservation(order)
        steps = self._steps(record, payment.get("intent"), reservation.get("reservation"))
        return {
            "compensation_id": record.id,
            "order_id": record.order_id,
            "read_at": iso(self._clock()),
            "payment": payment,
            "reservation": reservation,
            "steps": steps,
            "retry": self._retry(record, steps),
        }

    def _payment(self, intent_id: str | None) -> dict[str, Any]:
        if not intent_id:
            return {"intent": None, "error": "no authorization id is recorded for this order"}
        if self._payments is None:
            return {"intent": None, "error": "this payment gateway cannot read intents"}
        try:
            raw = self._payments.retrieve_with_charge(intent_id, timeout=self._timeout)
        except PaymentError as exc:
            logger.warning("could not read the intent", extra={"intent_id": intent_id, "error": str(exc)})
            return {"intent": None, "error": f"could not read the intent from Stripe: {exc}"}
        return {"intent": _intent_view(raw, self._clock()), "error": None}

    def _reservation(self, order: Order | None) -> dict[str, Any]:
        if order is None or not order.reservation_id:
            return {"reservation": None, "error": "no reservation id is recorded for this order"}
        if self._warehouse is None:
            return {"reservation": None, "error": "this warehouse client cannot read reservations"}
        try:
            found = self._warehouse.get(order.reservation_id, timeout=self._timeout)
        except WarehouseError as exc:
            logger.warning("could not read the reservation", extra={"reservation_id": order.reservation_id})
            return {"reservation": None, "error": f"could not read the reservation from the warehouse: {exc}"}
        return {"reservation": found.model_dump(mode="json"), "error": None}

    @staticmethod
    def _steps(
        record: FailedCompensation, intent: dict[str, Any] | None, reservation: dict[str, Any] | None
    ) -> list[dict[str, str]]:
        wanted: list[OperationType] = []
        for step in sorted(record.steps_to_retry()):
            if step is OperationType.ORDER_COMPENSATION:
                wanted += [OperationType.VOID_AUTHORIZATION, OperationType.RELEASE_RESERVATION]
            else:
                wanted.append(step)
        steps = []
        for step in dict.fromkeys(wanted):
            if step is OperationType.VOID_AUTHORIZATION:
                state, why = _void_state(intent)
            elif step is OperationType.REFUND:
                state, why = _refund_state(intent)
            else:
                state, why = _release_state(reservation)
            steps.append({"step": step.value, "state": state.value, "detail": why})
        return steps

    @staticmethod
    def _retry(record: FailedCompensation, steps: list[dict[str, str]]) -> dict[str, Any]:
        if not record.is_open:
            return {"allowed": False, "reason": f"the record was resolved at {record.resolved_at}"}
        impossible = [s for s in steps if s["state"] == StepState.IMPOSSIBLE]
        if impossible:
            return {"allowed": False, "reason": impossible[0]["detail"]}
        if steps and all(s["state"] == StepState.DONE for s in steps):
            done = "; ".join(s["detail"] for s in steps)
            return {
                "allowed": False,
                "reason": f"the providers already show every step done ({done}): resolve it with a note instead",
            }
        return {"allowed": True, "reason": None}


# KPIs ---------------------------------------------------------------------------------------------
# The dashboard's metrics (template.yaml CheckoutDashboard), summed over the window.
_SAGA_METRICS = ("CheckoutConfirmed", "PaymentDeclined", "CapturePending", "AuthorizeOutcomeUnknown")
_COMPENSATION_METRICS = ("CompensationFailed", "OrdersCompensated")


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


class Kpis:
    """The plan's four KPIs over a window: CloudWatch's metrics (as the dashboard shows them) and the ledger's records.

    Saga success rate and compensation failure rate come from the metrics the functions publish; average resolution
    time and the records' alerts come from the failed-compensation records themselves (the truth, and what a local
    stack without CloudWatch can show); alert volume is every message on the alerts topic (saga alerts and alarms).
    """

    def __init__(
        self,
        *,
        ledger: FailedCompensationLedger,
        cloudwatch: Any,
        namespace: str,
        service: str,
        alerts_topic_name: str,
        clock: Callable[[], float],
    ) -> None:
        self._ledger = ledger
        self._cloudwatch = cloudwatch
        self._namespace = namespace
        self._service = service
        self._topic = alerts_topic_name
        self._clock = clock

    def over(self, window: str) -> dict[str, Any]:
        seconds = KPI_WINDOWS[window]
        end = self._clock()
        start = end - seconds
        sums, metrics_error = self._metric_sums(start, end, seconds)
        records = {status: self._ledger.created_between(status, iso(start), iso(end)) for status in RecordStatus}
        resolved = records[RecordStatus.RESOLVED]
        durations = [seconds_between(r.created_at, r.resolved_at) for r in resolved if r.resolved_at]
        saga_total = sum(sums.get(name, 0) for name in _SAGA_METRICS)
        finished = sums.get("CheckoutConfirmed", 0) + sums.get("PaymentDeclined", 0)
        compensations = sums.get("CompensationFailed", 0) + sums.get("OrdersCompensated", 0)
        saga_alerts = sum(int(r.alert_sent) + int(r.exhausted_alert_sent) for found in records.values() for r in found)
        return {
            "window": window,
            "from": iso(start),
            "to": iso(end),
            "saga_success_rate": {
                "value": _rate(finished, saga_total),
                "completed_in_request": finished,
                "total": saga_total,
                "source": "cloudwatch",
            },
            "compensation_failure_rate": {
                "value": _rate(sums.get("CompensationFailed", 0), compensations),
                "failed": sums.get("CompensationFailed", 0),
                "total": compensations,
                "source": "cloudwatch",
            },
            "average_resolution_seconds": {
                "value": round(sum(durations) / len(durations), 1) if durations else None,
                "resolved": len(durations),
                "still_open": sum(len(found) for status, found in records.items() if status != RecordStatus.RESOLVED),
                "source": "ledger",
            },
            "alert_volume": {
                # SNS publishes the metric only for minutes with messages: no data is zero while the functions'
                # own metrics show the stack at work; with no metrics at all (no answer, or a local stack) unknown.
                "value": int(sums.get("alerts", 0)) if sums else None,
                "saga_alerts_of_records": saga_alerts,
                "source": "cloudwatch",
            },
            "records_created": {status.value: len(found) for status, found in records.items()},
            "metrics_found": bool(sums),
            "metrics_error": metrics_error,
        }

    def _metric_sums(self, start: float, end: float, period: int) -> tuple[dict[str, float], str | None]:
        """One GetMetricData call: each metric's Sum over the window (one period). Missing data sums to nothing."""
        dimensions = [{"Name": "service", "Value": self._service}]
        queries: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for index, name in enumerate((*_SAGA_METRICS, *_COMPENSATION_METRICS)):
            names[f"m{index}"] = name
            metric = {"Namespace": self._namespace, "MetricName": name, "Dimensions": dimensions}
            queries.append({"Id": f"m{index}", "MetricStat": {"Metric": metric, "Period": period, "Stat": "Sum"}})
        names["alerts"] = "alerts"
        topic = [{"Name": "TopicName", "Value": self._topic}]
        alerts_metric = {"Namespace": "AWS/SNS", "MetricName": "NumberOfMessagesPublished", "Dimensions": topic}
        queries.append({"Id": "alerts", "MetricStat": {"Metric": alerts_metric, "Period": period, "Stat": "Sum"}})
        try:
            answer = self._cloudwatch.get_metric_data(
                MetricDataQueries=queries,
                StartTime=datetime.fromtimestamp(start, UTC),
                EndTime=datetime.fromtimestamp(end, UTC),
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not read the KPI metrics", extra={"error": str(exc)})
            return {}, f"CloudWatch did not answer: {exc}"
        sums: dict[str, float] = {}
        for result in answer.get("MetricDataResults", []):
            if result.get("Values"):
                sums[names[result["Id"]]] = float(sum(result["Values"]))
        return sums, None
