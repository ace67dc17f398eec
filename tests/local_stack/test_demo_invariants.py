"""The demo's money-invariant check fails a scenario whose orders break ARCHITECTURE.md section 4."""

from __future__ import annotations

from typing import Any

from local.demo import Outcome, money_invariants, render


class StackState:
    """What the checker reads from the stack: the tables' orders and the providers' ledgers."""

    def __init__(self, orders: list[dict[str, Any]], payment: list[dict[str, Any]], released: list[str]) -> None:
        self._orders = orders
        self._payment = payment
        self._released = released

    def all_orders(self) -> list[dict[str, Any]]:
        return self._orders

    def provider_log(self, provider: str) -> dict[str, list[dict[str, Any]]]:
        if provider == "payment":
            return {"ledger": self._payment, "requests": []}
        return {"ledger": [{"op": "released", "id": r} for r in self._released], "requests": []}


def order(state: str, status: str, amount: int = 2500) -> dict[str, Any]:
    return {"order_id": "ord_1", "saga_state": state, "status": status, "amount_total": amount}


def outcome_for(**fields: Any) -> Outcome:
    outcome = Outcome("demo", "a scenario")
    outcome.orders = {"ord_1": "cus_1"}
    outcome.reservations = {"ord_1": "res_1"}
    for name, value in fields.items():
        setattr(outcome, name, value)
    return outcome


def failed(outcome: Outcome, state: StackState, *, converged: bool = True) -> list[str]:
    outcome.invariants = money_invariants(state, outcome, converged=converged)  # type: ignore[arg-type]
    return [c.what for c in outcome.invariants if not c.ok]


def test_a_clean_capture_passes() -> None:
    state = StackState(
        [order("CAPTURED", "confirmed")],
        [
            {"op": "authorized", "id": "pi_1", "order_id": "ord_1", "amount": 2500},
            {"op": "captured", "id": "pi_1", "order_id": "ord_1", "amount": 2500},
        ],
        [],
    )
    outcome = outcome_for()

    assert failed(outcome, state) == []
    assert outcome.passed


def test_a_second_capture_fails_the_scenario() -> None:
    capture = {"op": "captured", "id": "pi_1", "order_id": "ord_1", "amount": 2500}
    state = StackState([order("CAPTURED", "confirmed")], [capture, capture], [])
    outcome = outcome_for()

    assert failed(outcome, state) == ["1. ord_1: at most one capture", "3. ord_1: CAPTURED means charged"]
    assert not outcome.passed
    assert "FAIL 1. ord_1: at most one capture" in render(outcome, 1)


def test_an_orphaned_hold_and_held_stock_fail_once_converged() -> None:
    state = StackState(
        [order("COMPENSATED", "cancelled")],
        [{"op": "authorized", "id": "pi_1", "order_id": "ord_1", "amount": 2500}],
        [],
    )

    assert failed(outcome_for(), state) == [
        "2. ord_1: no orphaned hold",
        "4. ord_1: a cancelled order's stock is released",
    ]
    # Before the workers have run, a hold is expected.
    assert failed(outcome_for(), state, converged=False) == []


def test_an_open_record_with_its_alert_accounts_for_a_hold() -> None:
    state = StackState(
        [order("COMPENSATION_FAILED", "cancelled")],
        [{"op": "authorized", "id": "pi_1", "order_id": "ord_1", "amount": 2500}],
        [],
    )
    record = {"id": "fc_1", "order_id": "ord_1", "status": "failed"}
    alert = {"kind": "compensation_failed", "compensation_id": "fc_1", "order_id": "ord_1"}

    assert failed(outcome_for(records={"ord_1": [record]}, alerts=[alert]), state) == []
    assert failed(outcome_for(records={"ord_1": [record]}, alerts=[alert, alert]), state) == [
        "5. fc_1: exactly one compensation_failed alert"
    ]
