"""The template's Schedule / ScheduleV2 events fired locally, on a short period and on demand."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from local.lambdas import BackgroundLoops, Invocation, InvocationLog, LocalFunction, summarize
from local.template_stack import TemplateStack

_DISABLED = {"false", "disabled", "0", "no"}


@dataclass(frozen=True)
class ScheduledTrigger:
    """One schedule of one function, as EventBridge (Schedule) or EventBridge Scheduler (ScheduleV2) runs it."""

    function: LocalFunction
    event_name: str
    kind: str
    expression: str
    enabled: bool
    rule_name: str
    input: str | None

    @property
    def rule_arn(self) -> str:
        fn = self.function
        if self.kind == "ScheduleV2":
            return f"arn:aws:scheduler:{fn.region}:{fn.account}:schedule/default/{self.rule_name}"
        return f"arn:aws:events:{fn.region}:{fn.account}:rule/{self.rule_name}"

    def event(self, now: float) -> Any:
        """What the target receives: the schedule's constant Input when it has one, else a Scheduled Event."""
        if self.input is not None:
            return json.loads(self.input)
        moment = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": self.function.account,
            "time": moment,
            "region": self.function.region,
            "resources": [self.rule_arn],
            "detail": {},
        }


def scheduled_triggers(stack: TemplateStack, functions: dict[str, LocalFunction]) -> list[ScheduledTrigger]:
    triggers = []
    for function in functions.values():
        for name, event in function.events_of_type("Schedule", "ScheduleV2").items():
            props = event.get("Properties") or {}
            kind = str(event["Type"])
            expression = str(stack.resolve(props.get("Schedule" if kind == "Schedule" else "ScheduleExpression", "")))
            enabled = props.get("Enabled", True)
            state = props.get("State", "ENABLED")
            disabled = (
                str(stack.resolve(enabled)).lower() in _DISABLED or str(stack.resolve(state)).lower() in _DISABLED
            )
            raw_input = props.get("Input")
            rule = props.get("Name")
            triggers.append(
                ScheduledTrigger(
                    function=function,
                    event_name=name,
                    kind=kind,
                    expression=expression,
                    enabled=not disabled,
                    rule_name=str(stack.resolve(rule)) if rule else f"{stack.stack_name}-{function.logical_id}{name}",
                    input=None if raw_input is None else str(stack.resolve(raw_input)),
                )
            )
    return triggers


class Scheduler(BackgroundLoops):
    """Fires every enabled schedule every `period` seconds; one run of a function at a time."""

    def __init__(
        self,
        triggers: list[ScheduledTrigger],
        log: InvocationLog,
        *,
        period: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.triggers = triggers
        self.period = period
        self._log = log
        self._clock = clock
        # Locally a function's runs never overlap, so the log reads in order; its leases would cope anyway.
        self._locks = {t.function.logical_id: threading.Lock() for t in triggers}

    def start(self) -> Scheduler:
        for index, trigger in enumerate(t for t in self.triggers if t.enabled):
            self._spawn(f"schedule:{trigger.function.logical_id}", self._loop, trigger, index)
        return self

    def _loop(self, trigger: ScheduledTrigger, index: int) -> None:
        # Staggered first runs keep two workers from starting in the same instant, as on AWS.
        if self._stop.wait(self.period + index * 0.5):
            return
        while not self._stop.is_set():
            self.fire(trigger, on_demand=False)
            if self._stop.wait(self.period):
                return

    def fire(self, trigger: ScheduledTrigger, *, on_demand: bool) -> Invocation:
        with self._locks[trigger.function.logical_id]:
            invocation = trigger.function.invoke(trigger.event(self._clock()))
        label = f"{'run-now' if on_demand else 'schedule'} {trigger.expression}"
        outcome = summarize(invocation.result) if invocation.error is None else _error(invocation.error)
        self._log.line(trigger.function, label, outcome, invocation)
        return invocation


def _error(error: BaseException) -> str:
    return f"ERROR {type(error).__name__}: {error}"[:120]
