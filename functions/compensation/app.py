"""compensation: every 10 minutes, compensates CAPTURE_FAILED orders and takes over stale sagas (recovery)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.observability import logger, metrics, tracer
from checkout.recovery import METRICS, WORKER
from checkout.runtime import runtime
from checkout.workers import emit_backlog, run_scheduled


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    current = runtime()
    return run_scheduled(
        WORKER,
        lambda: current.compensation_worker,
        switch=current.pause_switch,
        metric_names=METRICS,
        context=context,
        request_id=context.aws_request_id,
        backlog=lambda: emit_backlog(current.store, current.clock()),
    )
