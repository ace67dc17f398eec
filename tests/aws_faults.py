"""AWS failures injected on the real boto3 clients through botocore's event hooks (no patching of our code).

- `fail(...)`: the call answers an AWS error (ThrottlingException, InternalServerError, ...) after the SDK's own
  retries were used up, `times` times, without reaching the service.
- `lose_answer(...)`: the call goes through, then its answer is lost (a dropped connection): the caller sees an
  error although the write happened.
- `retry_after_success(...)`: the call goes through and botocore re-sends it anyway, as its retry handler does
  when the first answer was lost in transit; a conditional write then fails its condition on its own effect.
- `crash(...)`: the process dies before or after the call (a BaseException nothing in the code catches).
A `when` predicate sees the call's API parameters, so a fault can target one write (say, the move to a state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

Params = dict[str, Any]


class Crash(BaseException):
    """The Lambda dying mid-invocation: nothing after this point runs, no handler catches it."""


@dataclass
class _Fault:
    kind: str  # fail | lose | retry | crash_before | crash_after
    operation: str
    times: int
    when: Callable[[Params], bool]
    code: str = "ThrottlingException"
    status: int = 400
    fired: int = 0


def _events(client: Any) -> Any:
    return client.meta.events


class AwsFaults:
    """Faults on one boto3 client (a SerializedClient passes `meta` through)."""

    def __init__(self, client: Any) -> None:
        self._faults: list[_Fault] = []
        self.fired: list[tuple[str, str]] = []
        events = _events(client)
        service = client.meta.service_model.service_id.hyphenize()
        events.register(f"before-parameter-build.{service}", self._remember_params)
        events.register(f"before-call.{service}", self._before_call)
        events.register(f"after-call.{service}", self._after_call)
        events.register(f"needs-retry.{service}", self._needs_retry)

    # ---- API ----------------------------------------------------------------------------------
    def fail(
        self,
        operation: str,
        *,
        code: str = "ThrottlingException",
        times: int = 1,
        when: Callable[[Params], bool] = lambda _: True,
    ) -> None:
        status = 500 if code in ("InternalServerError", "InternalFailure", "ServiceUnavailable") else 400
        self._faults.append(_Fault("fail", operation, times, when, code, status))

    def lose_answer(self, operation: str, *, times: int = 1, when: Callable[[Params], bool] = lambda _: True) -> None:
        self._faults.append(_Fault("lose", operation, times, when))

    def retry_after_success(
        self, operation: str, *, times: int = 1, when: Callable[[Params], bool] = lambda _: True
    ) -> None:
        self._faults.append(_Fault("retry", operation, times, when))

    def crash(
        self, operation: str, *, after: bool = False, times: int = 1, when: Callable[[Params], bool] = lambda _: True
    ) -> None:
        self._faults.append(_Fault("crash_after" if after else "crash_before", operation, times, when))

    def heal(self) -> None:
        self._faults.clear()

    @property
    def pending(self) -> int:
        return sum(f.times - f.fired for f in self._faults)

    # ---- hooks --------------------------------------------------------------------------------
    def _take(self, kinds: tuple[str, ...], operation: str, params: Params) -> _Fault | None:
        for fault in self._faults:
            live = fault.kind in kinds and fault.operation == operation and fault.fired < fault.times
            if live and fault.when(params):
                fault.fired += 1
                self.fired.append((fault.kind, operation))
                return fault
        return None

    @staticmethod
    def _remember_params(params: Params, context: dict[str, Any], **_: Any) -> None:
        context["fault_params"] = params

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> Any:
        params = context.get("fault_params", {})
        fault = self._take(("fail", "crash_before", "retry"), model.name, params)
        if fault is None:
            return None
        if fault.kind == "crash_before":
            raise Crash(f"process died before {model.name}")
        if fault.kind == "retry":
            context["fault_retry"] = True
            return None
        response = AWSResponse(url="https://fault.invalid", status_code=fault.status, headers={}, raw=None)
        body = {
            "Error": {"Code": fault.code, "Message": f"injected {fault.code}"},
            "ResponseMetadata": {"HTTPStatusCode": fault.status, "RetryAttempts": 2},
        }
        return response, body

    def _after_call(self, model: Any, context: dict[str, Any], http_response: Any, **_: Any) -> None:
        if http_response.status_code >= 300 or context.get("fault_short_circuit"):
            return
        params = context.get("fault_params", {})
        fault = self._take(("lose", "crash_after"), model.name, params)
        if fault is None:
            return
        if fault.kind == "crash_after":
            raise Crash(f"process died after {model.name} went through")
        raise ConnectionClosedError(endpoint_url="https://dynamodb.invalid")

    @staticmethod
    def _needs_retry(attempts: int, request_dict: dict[str, Any], **_: Any) -> float | None:
        context = request_dict.get("context", {})
        if context.get("fault_retry") and attempts == 1:
            context["fault_retry"] = False
            return 0.0  # re-send at once, as botocore does after a lost answer
        return None
