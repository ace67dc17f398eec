"""admin: failed compensations (list, show, retry, resolve), orders, the DLQ and KPIs, for operators (IAM auth)."""

from http import HTTPStatus
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.api_models import ErrorBody, RedriveRequest, ResolveRequest, RetryRequest
from checkout.errors import CheckoutError
from checkout.failed_compensations import RecordStatus
from checkout.http_api import answer_errors_as_json, json_response, refuse_oversized
from checkout.observability import logger, metrics, tracer
from checkout.operator_actions import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from checkout.runtime import runtime

app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_as_json(app)


def _answers(success: tuple[int, str], *errors: tuple[int, str]) -> dict[int, OpenAPIResponse]:
    """The route's answers for docs/admin-openapi.json; every error is `{"error", "message"}`."""
    answers: dict[int, OpenAPIResponse] = {success[0]: {"description": success[1]}}
    for status, codes in (*errors, (403, "forbidden: no IAM caller"), (500, "internal_error")):
        answers[status] = {"description": codes, "content": {"application/json": {"model": ErrorBody}}}
    return answers


class NoIamCaller(CheckoutError):
    """Defence in depth: every /admin route is IAM-authorized in the template, so this means misconfiguration."""

    status, code = 403, "forbidden"


def _operator() -> str:
    """The IAM caller API Gateway authenticated (SigV4), recorded on every action."""
    caller = app.current_event.request_context.authorizer.iam.user_arn
    if not caller:
        raise NoIamCaller("admin routes need an IAM-signed (SigV4) request")
    return caller


@app.get(
    "/admin/compensations",
    summary="List failed compensations, by status or all (failed first)",
    responses=_answers((200, "{items: [record], next_cursor}"), (422, "validation_error")),
)
@tracer.capture_method
def list_compensations(
    status: Annotated[RecordStatus | None, Query(description="only records in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="page size")] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(min_length=1, max_length=2048, description="next_cursor of a page")] = None,
) -> Response[str]:
    _operator()
    page = runtime().operator_actions.list_records(status=status, limit=limit, cursor=cursor)
    return json_response(HTTPStatus.OK, page.body())


@app.get(
    "/admin/counts",
    summary="How many failed-compensation records are in each status",
    responses=_answers((200, "{compensations: {failed, retrying, pending, resolved}}")),
)
@tracer.capture_method
def get_counts() -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, {"compensations": runtime().operator_actions.counts()})


@app.get(
    "/admin/compensations/<compensation_id>",
    summary="One failed-compensation record",
    responses=_answers((200, "the record"), (404, "compensation_not_found")),
)
@tracer.capture_method
def get_compensation(compensation_id: Annotated[str, Path(min_length=1, max_length=256)]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().operator_actions.show(compensation_id).public_view())


@app.post(
    "/admin/compensations/<compensation_id>/retry",
    summary="Queue a failed compensation for another try",
    responses=_answers(
        (202, "the record, pending and re-queued"),
        (404, "compensation_not_found"),
        (409, "compensation_resolved"),
        (422, "validation_error"),
        (503, "queue_unavailable"),
    ),
)
@tracer.capture_method
def retry_compensation(
    compensation_id: Annotated[str, Path(min_length=1, max_length=256)],
    body: Annotated[RetryRequest | None, Body()] = None,
) -> Response[str]:
    record = runtime().operator_actions.retry(compensation_id, by=_operator(), note=body.note if body else None)
    return json_response(HTTPStatus.ACCEPTED, record.public_view())


@app.post(
    "/admin/compensations/<compensation_id>/resolve",
    summary="Resolve by hand; the order becomes COMPENSATED",
    responses=_answers(
        (200, "the record, resolved"),
        (404, "compensation_not_found"),
        (409, "compensation_resolved"),
        (422, "validation_error: the note is missing or blank"),
    ),
)
@tracer.capture_method
def resolve_compensation(
    compensation_id: Annotated[str, Path(min_length=1, max_length=256)],
    body: Annotated[ResolveRequest, Body()],
) -> Response[str]:
    record = runtime().operator_actions.resolve(compensation_id, by=_operator(), note=body.note)
    return json_response(HTTPStatus.OK, record.public_view())


@app.get(
    "/admin/orders/<order_id>",
    summary="An order with its history and failed-compensation records",
    responses=_answers((200, "the order, its history and its records"), (404, "order_not_found")),
)
@tracer.capture_method
def get_order(order_id: Annotated[str, Path(min_length=1, max_length=128)]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().operator_actions.order(order_id))


@app.get(
    "/admin/compensations/<compensation_id>/provider-state",
    summary="What Stripe and the warehouse show now for a record's steps, and whether a retry can still help",
    responses=_answers((200, "{payment, reservation, steps, retry}"), (404, "compensation_not_found")),
)
@tracer.capture_method
def get_provider_state(compensation_id: Annotated[str, Path(min_length=1, max_length=256)]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().provider_states.of(compensation_id))


@app.get(
    "/admin/dlq",
    summary="Depth of the failed-compensations DLQ and of its source queue, and recent redrive tasks",
    responses=_answers((200, "{dlq, queue, redrive_tasks}"), (503, "queue_unavailable")),
)
@tracer.capture_method
def get_dlq() -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().dead_letters.status())


@app.post(
    "/admin/dlq/redrive",
    summary="Move every DLQ message back to the failed-compensations queue",
    responses=_answers(
        (202, "the redrive task (or, where SQS has no move task, the messages moved)"),
        (422, "validation_error"),
        (503, "queue_unavailable"),
    ),
)
@tracer.capture_method
def redrive_dlq(body: Annotated[RedriveRequest | None, Body()] = None) -> Response[str]:
    by = _operator()
    result = runtime().dead_letters.redrive(max_per_second=body.max_per_second if body else None)
    logger.info("operator redrove the DLQ", extra={"by": by, "result": result})
    return json_response(HTTPStatus.ACCEPTED, {**result, "by": by})


@app.get(
    "/admin/kpis",
    summary="Saga success rate, compensation failure rate, average resolution time and alert volume over a window",
    responses=_answers((200, "the four KPIs and the records created in the window"), (422, "validation_error")),
)
@tracer.capture_method
def get_kpis(
    window: Annotated[Literal["1h", "24h", "7d", "30d"], Query(description="how far back from now")] = "24h",
) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().kpis.over(window))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Outside the resolver on purpose: bad configuration fails the invocation loudly (Errors alarm).
    runtime()
    return refuse_oversized(event) or app.resolve(event, context)
