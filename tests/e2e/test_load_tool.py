"""`make load` as a user runs it: a small run against the local stack passes and prints the budgets; what
counts as an unexpected 5xx, and that one fails the run."""

from __future__ import annotations

import io
from collections import Counter

from local import load
from local.demo import LocalApi
from local.stack_process import StackProcess


def test_a_small_load_run_with_faults_converges_keeps_the_invariants_and_prints_the_budgets(
    local_stack: StackProcess, local_api: LocalApi
) -> None:
    # When 20 checkouts are confirmed 5 at a time with 40 % of payment calls failing
    out = io.StringIO()
    status = load.main(["-n", "20", "-c", "5", "--fault-rate", "0.4", "--seed", "3", "--url", local_stack.url], out=out)

    # Then the run passed, faults were injected, and every figure and budget is printed
    text = out.getvalue()
    assert status == 0, text
    assert "PASSED" in text
    assert "injected payment faults (per call): " in text
    assert "injected payment faults (per call): none" not in text
    for figure in ("confirms: ", "p50", "p95", "p99", "stack memory:", "invariants (ARCHITECTURE.md section 4)"):
        assert figure in text
    assert text.count("  met ") + text.count("  MISS ") == 4
    assert "0 unexpected 5xx" in text
    # and the provider is healed afterwards
    assert local_api.payment.get("/_faults").json() == {"faults": {}}


def test_a_5xx_is_expected_only_as_a_payment_error_of_an_order_that_got_a_fault() -> None:
    faulted = load.Sample("POST /checkout/confirm", 502, "payment_outcome_unknown", 0.1, fault="status:500")
    unfaulted = load.Sample("POST /checkout/confirm", 502, "payment_outcome_unknown", 0.1)
    internal = load.Sample("POST /checkout/confirm", 500, "internal_error", 0.1, fault="status:500")
    refused = load.Sample("POST /checkout/confirm", 409, "confirm_in_progress", 0.1)
    dropped = load.Sample("POST /checkout/confirm", 0, "client_error:ReadTimeout", 60.0)

    assert [load.unexpected(s) for s in (faulted, unfaulted, internal, refused, dropped)] == [
        False,
        True,
        True,
        False,
        True,
    ]


def test_an_unexpected_5xx_fails_the_run_and_is_named() -> None:
    run = load.Run(confirm_seconds=1.0, session_seconds=1.0)
    run.sessions = [load.Sample("POST /checkout/sessions", 201, "open", 0.05)]
    run.confirms = [
        load.Sample("POST /checkout/confirm", 201, "confirmed", 0.2, order_id="ord_ok"),
        load.Sample("POST /checkout/confirm", 500, "internal_error", 0.3, order_id="ord_bad"),
    ]
    out = io.StringIO()

    ok = load.report(
        run,
        concurrency=2,
        fault_rate=0.1,
        memory_after=100,
        memory_peak=120,
        memory_detail="",
        checks_failed=[],
        checks_total=3,
        states=Counter({"CAPTURED": 2}),
        records=Counter(),
        out=out,
    )

    assert not ok
    assert "MISS  0 unexpected 5xx at c=2" in out.getvalue()
    assert "unexpected: POST /checkout/confirm -> 500 internal_error (order ord_bad" in out.getvalue()


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 100 for i in range(1, 101)]

    assert load.percentile(values, 0.50) == 0.50
    assert load.percentile(values, 0.99) == 0.99
    assert load.percentile([0.3], 0.99) == 0.3
