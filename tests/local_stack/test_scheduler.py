"""The template's schedules run locally on a short period, can be switched off by their parameter, and run on demand."""

from __future__ import annotations

import copy
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from local.lambdas import InvocationLog, LocalClock, discover_functions
from local.scheduler import Scheduler, scheduled_triggers
from local.template_stack import TemplateStack, load_template


def template_with_workers() -> dict[str, Any]:
    """The real template plus three scheduled functions, two switched off by a parameter (Enabled, State)."""
    template = copy.deepcopy(load_template())
    template["Parameters"]["SweeperScheduleEnabled"] = {"Type": "String", "Default": "false"}
    template["Parameters"]["JanitorSchedule"] = {"Type": "String", "Default": "DISABLED"}
    for name, rate, switch in (
        ("TickerFunction", "rate(5 minutes)", {"Enabled": True}),
        ("SweeperFunction", "rate(10 minutes)", {"Enabled": {"Ref": "SweeperScheduleEnabled"}}),
        ("JanitorFunction", "rate(1 hour)", {"State": {"Ref": "JanitorSchedule"}}),
    ):
        template["Resources"][name] = {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "CodeUri": f"functions/{name.lower()}/",
                "Handler": "app.lambda_handler",
                "Timeout": 60,
                "Events": {"Every": {"Type": "Schedule", "Properties": {"Schedule": rate, **switch}}},
            },
        }
    return template


@pytest.fixture
def stack() -> TemplateStack:
    # Resolving names needs no AWS calls: nothing is deployed here.
    return TemplateStack(template_with_workers())


def test_schedules_come_from_the_template_with_their_enabled_switch(stack: TemplateStack) -> None:
    triggers = {t.function.logical_id: t for t in scheduled_triggers(stack, discover_functions(stack))}

    assert triggers["TickerFunction"].expression == "rate(5 minutes)"
    assert triggers["TickerFunction"].enabled
    assert not triggers["SweeperFunction"].enabled
    assert not triggers["JanitorFunction"].enabled
    assert triggers["TickerFunction"].function.module == "functions.tickerfunction.app"
    assert triggers["TickerFunction"].function.timeout_seconds == 60

    switched_on = TemplateStack(
        template_with_workers(), parameters={"SweeperScheduleEnabled": "true", "JanitorSchedule": "ENABLED"}
    )
    assert all(t.enabled for t in scheduled_triggers(switched_on, discover_functions(switched_on)))


def test_enabled_schedules_fire_every_period_with_a_scheduled_event_on_the_local_clock(stack: TemplateStack) -> None:
    # Given the local clock moved a day ahead
    clock = LocalClock()
    clock.advance(86400)
    functions = discover_functions(stack)
    events: dict[str, list[dict[str, Any]]] = {"TickerFunction": [], "SweeperFunction": [], "JanitorFunction": []}
    two_runs = threading.Event()
    for name, seen in events.items():

        def handler(event: dict[str, Any], context: Any, seen: list[dict[str, Any]] = seen) -> dict[str, int]:
            seen.append(event)
            if len(seen) >= 2:
                two_runs.set()
            return {"due": 0}

        functions[name].handler = handler

    # When the scheduler runs on a short period
    scheduler = Scheduler(scheduled_triggers(stack, functions), InvocationLog(), period=0.05, clock=clock).start()
    try:
        assert two_runs.wait(10)
    finally:
        scheduler.stop()

    # Then only the enabled schedule fired, with EventBridge's Scheduled Event dated by the local clock
    assert events["SweeperFunction"] == events["JanitorFunction"] == []
    event = events["TickerFunction"][0]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"][0].startswith("arn:aws:events:us-east-1:123456789012:rule/")
    fired_at = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert fired_at > time.time() + 86400 - 60


def test_a_run_on_demand_is_logged_in_one_line(stack: TemplateStack, capsys: pytest.CaptureFixture[str]) -> None:
    functions = discover_functions(stack)
    functions["SweeperFunction"].handler = lambda event, context: {"compensated": 1}
    (trigger,) = [t for t in scheduled_triggers(stack, functions) if t.function.logical_id == "SweeperFunction"]

    invocation = Scheduler([trigger], InvocationLog(), period=60).fire(trigger, on_demand=True)

    assert invocation.ok
    assert invocation.result == {"compensated": 1}
    (line,) = capsys.readouterr().out.splitlines()
    assert "SweeperFunction" in line
    assert "run-now rate(10 minutes)" in line
    assert 'ok {"compensated":1}' in line
    assert line.endswith(" ms")
