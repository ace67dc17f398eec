"""admin: failed compensations (list, show, retry, resolve), orders, the DLQ and KPIs, for operators (IAM auth)."""

from http import HTTPStatus
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.api_models import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    AdminOrderOut,
    CompensationPage,
    CompensationRecordOut,
    JsonObject,
    RedriveRequest,
    ResolveRequest,
    RetryRequest,
)
from checkout.errors import CheckoutError, OrderNotFound, ValidationFailed
from checkout.failed_compensations import RecordStatus
from checkout.http_api import JsonApi, answer, answers, json_response, refuse_unreadable
from checkout.observability import logger, metrics, tracer
from checkout.operator_actions import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CompensationNotFound,
    CompensationResolved,
    QueueUnavailable,
)
from checkout.runtime import runtime

app = JsonApi()

COMPENSATION_ID = Path(
    min_length=1,
    max_length=MAX_ID_LENGTH,
    pattern=ID_PATTERN,
    description="a failed-compensation record's id",
    examples=["fc_ord_1c2d3e4f_void_authorization"],
)
ORDER_ID = Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, examples=["ord_1c2d3e4f"])


class NoIamCaller(CheckoutError):
    """Defence in depth: every /admin route is IAM-authorized in the template, so this means misconfiguration."""

    status, code = 403, "forbidden"


def _admin(*successes: dict[int, Any], errors: tuple[type[CheckoutError], ...] = ()) -> dict[int, Any]:
    """An admin route's answers: every one may also be a 403 when no IAM caller reached it."""
    return answers(*successes, errors=(*errors, NoIamCaller))


def _operator() -> str:
    """The IAM caller API Gateway authenticated (SigV4), recorded on every action."""
    caller = app.current_event.request_context.authorizer.iam.user_arn
    if not caller:
        raise NoIamCaller("admin routes need an IAM-signed (SigV4) request")
    return caller


@app.get(
    "/admin/compensations",
    operation_id="list_compensations",
    summary="List failed compensations, by status or all (failed first)",
    responses=_admin(
        answer(
            200,
            CompensationPage,
            "a page of records, and where the next one starts",
            links={
                "GetFirstCompensation": {
                    "operationId": "get_compensation",
                    "parameters": {"path.compensation_id": "$response.body#/items/0/id"},
                },
                "NextPage": {
                    "operationId": "list_compensations",
                    "parameters": {"query.cursor": "$response.body#/next_cursor"},
                },
            },
        )
    ),
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
    operation_id="get_counts",
    summary="How many failed-compensation records are in each status",
    responses=_admin(answer(200, JsonObject, "{compensations: {failed, retrying, pending, resolved}}")),
)
@tracer.capture_method
def get_counts() -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, {"compensations": runtime().operator_actions.counts()})


@app.get(
    "/admin/compensations/<compensation_id>",
    operation_id="get_compensation",
    summary="One failed-compensation record",
    responses=_admin(
        answer(
            200,
            CompensationRecordOut,
            "the record",
            links={
                "GetItsOrder": {
                    "operationId": "get_admin_order",
                    "parameters": {"path.order_id": "$response.body#/order_id"},
                },
                "RetryIt": {
                    "operationId": "retry_compensation",
                    "parameters": {"path.compensation_id": "$response.body#/id"},
                },
                "ResolveIt": {
                    "operationId": "resolve_compensation",
                    "parameters": {"path.compensation_id": "$response.body#/id"},
                },
            },
        ),
        errors=(CompensationNotFound,),
    ),
)
@tracer.capture_method
def get_compensation(compensation_id: Annotated[str, COMPENSATION_ID]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().operator_actions.show(compensation_id).public_view())


@app.post(
    "/admin/compensations/<compensation_id>/retry",
    operation_id="retry_compensation",
    summary="Queue a failed compensation for another try",
    responses=_admin(
        answer(202, CompensationRecordOut, "the record, pending and re-queued"),
        errors=(CompensationNotFound, CompensationResolved, QueueUnavailable),
    ),
)
@tracer.capture_method
def retry_compensation(
    compensation_id: Annotated[str, COMPENSATION_ID],
    body: Annotated[RetryRequest | None, Body()] = None,
) -> Response[str]:
    record = runtime().operator_actions.retry(compensation_id, by=_operator(), note=body.note if body else None)
    return json_response(HTTPStatus.ACCEPTED, record.public_view())


@app.post(
    "/admin/compensations/<compensation_id>/resolve",
    operation_id="resolve_compensation",
    summary="Resolve by hand; the order becomes COMPENSATED",
    responses=_admin(
        answer(200, CompensationRecordOut, "the record, resolved"),
        errors=(CompensationNotFound, CompensationResolved, ValidationFailed),
    ),
)
@tracer.capture_method
def resolve_compensation(
    compensation_id: Annotated[str, COMPENSATION_ID],
    body: Annotated[ResolveRequest, Body()],
) -> Response[str]:
    record = runtime().operator_actions.resolve(compensation_id, by=_operator(), note=body.note)
    return json_response(HTTPStatus.OK, record.public_view())


@app.get(
    "/admin/orders/<order_id>",
    operation_id="get_admin_order",
    summary="An order with its history and failed-compensation records",
    responses=_admin(answer(200, AdminOrderOut, "the order, its history and its records"), errors=(OrderNotFound,)),
)
@tracer.capture_method
def get_order(order_id: Annotated[str, ORDER_ID]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().operator_actions.order(order_id))


@app.get(
    "/admin/compensations/<compensation_id>/provider-state",
    operation_id="get_provider_state",
    summary="What Stripe and the warehouse show now for a record's steps, and whether a retry can still help",
    responses=_admin(answer(200, JsonObject, "{payment, reservation, steps, retry}"), errors=(CompensationNotFound,)),
)
@tracer.capture_method
def get_provider_state(compensation_id: Annotated[str, COMPENSATION_ID]) -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().provider_states.of(compensation_id))


@app.get(
    "/admin/dlq",
    operation_id="get_dlq",
    summary="Depth of the failed-compensations DLQ and of its source queue, and recent redrive tasks",
    responses=_admin(answer(200, JsonObject, "{dlq, queue, redrive_tasks}"), errors=(QueueUnavailable,)),
)
@tracer.capture_method
def get_dlq() -> Response[str]:
    _operator()
    return json_response(HTTPStatus.OK, runtime().dead_letters.status())


@app.post(
    "/admin/dlq/redrive",
    operation_id="redrive_dlq",
    summary="Move every DLQ message back to the failed-compensations queue",
    responses=_admin(
        answer(202, JsonObject, "the redrive task (or, where SQS has no move task, the messages moved)"),
        errors=(QueueUnavailable,),
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
    operation_id="get_kpis",
    summary="Saga success rate, compensation failure rate, average resolution time and alert volume over a window",
    responses=_admin(answer(200, JsonObject, "the four KPIs and the records created in the window")),
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
    return refuse_unreadable(event) or app.resolve(event, context)
