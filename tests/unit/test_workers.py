"""The workers' shared rules: backoff with jitter, the per-run circuit breaker, the pause switch, the time budget."""

from __future__ import annotations

import pytest

from checkout.capture_retry import backoff_seconds
from checkout.deadline import Deadline
from checkout.workers import Circuit, PauseSwitch, RunBudget, RunCircuit


@pytest.mark.parametrize(("attempts", "expected"), [(0, 60), (1, 120), (2, 240), (4, 960), (5, 1800), (9, 1800)])
def test_backoff_doubles_from_the_base_up_to_the_cap(attempts: int, expected: int) -> None:
    assert backoff_seconds(attempts, base=60, cap=1800, rand=lambda: 0.0) == expected


def test_backoff_jitter_takes_at_most_a_fifth_off() -> None:
    assert backoff_seconds(3, base=60, cap=1800, rand=lambda: 1.0) == int(480 * 0.8)
    assert backoff_seconds(0, base=1, cap=1, rand=lambda: 1.0) == 1  # never zero: a retry is never immediate


def test_circuit_opens_after_threshold_consecutive_provider_failures() -> None:
    circuit = RunCircuit(3)
    for _ in range(2):
        circuit.record(provider_fault=True)
    assert circuit.state is Circuit.CLOSED
    circuit.record(provider_fault=True)
    assert circuit.state is Circuit.OPEN


def test_a_success_or_a_business_answer_resets_the_streak() -> None:
    circuit = RunCircuit(3)
    for fault in (True, True, False, True, True):
        circuit.record(provider_fault=fault)
    assert circuit.is_open is False


def test_budget_stops_when_a_payment_call_and_its_writes_no_longer_fit() -> None:
    remaining = [30.0]
    budget = RunBudget(Deadline(lambda: remaining[0]), payment_timeout=15, circuit=RunCircuit(5))
    assert budget.stop_reason() is None
    remaining[0] = 19.0  # 15 s call + 3 s to write + 2 s margin do not fit
    assert budget.stop_reason() == "out_of_time"
    assert budget.lease_seconds() == 19  # ends with the invocation, never after it


def test_budget_stops_when_the_circuit_is_open() -> None:
    circuit = RunCircuit(1)
    circuit.record(provider_fault=True)
    assert RunBudget(Deadline(lambda: 100.0), payment_timeout=1, circuit=circuit).stop_reason() == "circuit_open"


@pytest.mark.parametrize(
    ("value", "capture_retry", "compensation"),
    [
        ("none", False, False),
        ("capture_retry", True, False),
        ("capture_retry,compensation", True, True),
        ("all", True, True),
    ],
)
def test_pause_switch_names_the_paused_workers(value: str, capture_retry: bool, compensation: bool) -> None:
    switch = PauseSwitch("/stack/workers/paused", fetch=lambda _: value)
    assert switch.paused("capture_retry") is capture_retry
    assert switch.paused("compensation") is compensation


def test_no_switch_configured_never_pauses_and_an_unreadable_one_runs() -> None:
    assert PauseSwitch(None).paused("capture_retry") is False

    def unreachable(_: str) -> str:
        raise ConnectionError("ssm down")

    assert PauseSwitch("/stack/workers/paused", fetch=unreachable).paused("capture_retry") is False
