"""dlq_processor: one fresh try per failed-compensation message, reporting only the failures back to SQS."""

from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.deadline import Deadline
from checkout.observability import logger, metrics, tracer
from checkout.runtime import runtime

# A batch whose every message failed is still a normal answer (each is redelivered or moved to the DLQ),
# not a function error: the Errors alarm is kept for code that breaks.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class CompensationNotDone(Exception):
    """The message's compensation is still open: SQS delivers it again, or moves it to the DLQ."""


# No @tracer.capture_method: it logs every raised exception at ERROR, and a failed try is an expected answer.
def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> str:
    receive_count = record.attributes.approximate_receive_count
    result = runtime().compensation_retries.process(
        record.body,
        Deadline.from_context(lambda_context),
        message_id=record.message_id,
        receive_count=int(receive_count) if receive_count else None,
    )
    if not result.outcome.done:
        raise CompensationNotDone(f"{result.compensation_id or record.message_id}: {result.outcome} {result.detail}")
    return result.outcome.value


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
