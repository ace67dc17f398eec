"""capture_retry: every 5 minutes, captures the CAPTURE_PENDING orders that are due, with backoff between tries."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.capture_retry import METRICS, WORKER
from checkout.observability import MetricUnit, logger, metrics, tracer
from checkout.runtime import runtime
from checkout.workers import run_scheduled


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    current = runtime()
    summary = run_scheduled(
        WORKER,
        lambda: current.capture_retry_worker,
        switch=current.pause_switch,
        metric_names=METRICS,
        context=context,
        request_id=context.aws_request_id,
    )
    if not summary["paused"]:
        # The dashboard's backlog: due orders this run found (a lower bound when it stopped early).
        metrics.add_metric(name="CaptureBacklog", unit=MetricUnit.Count, value=summary["due"])
    return summary
