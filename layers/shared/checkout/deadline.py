"""The time budget of one invocation: no outbound call may outlive its Lambda."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class LambdaContextLike(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class OutOfTime(Exception):
    """Too little of the invocation is left to make one more call safely."""


# What stays reserved after a call's timeout: enough to write the outcome and answer.
DEFAULT_MARGIN_SECONDS = 2.0
# A call given less than this cannot do useful work; better not to send it at all.
MIN_CALL_SECONDS = 0.5


class Deadline:
    def __init__(self, remaining: Callable[[], float], *, margin: float = DEFAULT_MARGIN_SECONDS) -> None:
        self._remaining = remaining
        self._margin = margin

    @classmethod
    def from_context(cls, context: LambdaContextLike, *, margin: float = DEFAULT_MARGIN_SECONDS) -> Deadline:
        return cls(lambda: context.get_remaining_time_in_millis() / 1000.0, margin=margin)

    @classmethod
    def after(cls, seconds: float, *, margin: float = DEFAULT_MARGIN_SECONDS) -> Deadline:
        end = time.monotonic() + seconds
        return cls(lambda: end - time.monotonic(), margin=margin)

    def remaining(self) -> float:
        return self._remaining()

    def call_timeout(self, cap: float) -> float:
        """`min(cap, remaining - margin)`; raises OutOfTime when that is too short to be worth a call."""
        budget = min(cap, self._remaining() - self._margin)
        if budget < MIN_CALL_SECONDS:
            raise OutOfTime(f"{self._remaining():.1f}s left, {self._margin:.1f}s reserved")
        return budget

    def has_time_for(self, seconds: float) -> bool:
        return self._remaining() - self._margin >= seconds
