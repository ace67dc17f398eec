"""confirm_checkout: POST /checkout/sessions, POST /checkout/confirm, GET /orders/{order_id}."""

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.api_models import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_TOKEN_LENGTH,
    TOKEN_PATTERN,
    ConfirmAnswer,
    Confirmed,
    ConfirmRequest,
    CreateSessionRequest,
    OrderOut,
    PaymentPending,
    SessionOut,
)
from checkout.deadline import Deadline
from checkout.errors import (
    ConfirmInProgress,
    OrderNotFound,
    OrderNotRecorded,
    OutOfStockError,
    PaymentDeclinedError,
    PaymentOutcomeUnknownError,
    PaymentTimeout,
    PaymentUnavailable,
    SessionClosed,
    SessionNotFound,
    ValidationFailed,
    WarehouseTimeoutError,
    WarehouseUnavailableError,
)
from checkout.http_api import JsonApi, answer, answers, json_response, refuse_unreadable
from checkout.observability import logger, metrics, tracer
from checkout.orders import LineItem
from checkout.runtime import runtime

app = JsonApi()

SESSION_ID = Header(
    min_length=1,
    max_length=MAX_ID_LENGTH,
    pattern=ID_PATTERN,
    description="the session_id POST /checkout/sessions answered (letters, digits, _ and -)",
    examples=["cs_0f3a9c2e5b7d4e1f8a6b2c3d4e5f6a7b"],
)
CUSTOMER_ID = Header(
    min_length=1,
    max_length=MAX_ID_LENGTH,
    pattern=TOKEN_PATTERN,
    description=(
        "the customer (printable ASCII without spaces, at most 128 characters); required unless a JWT authorizer"
        " is configured, whose `sub` claim then is the customer and wins over this header"
    ),
    examples=["cus_1"],
)
IDEMPOTENCY_KEY = Header(
    min_length=1,
    max_length=MAX_TOKEN_LENGTH,
    pattern=TOKEN_PATTERN,
    description="the same key resumes the same attempt (printable ASCII without spaces, at most 255 characters)",
)


def _customer(header_value: str | None) -> str:
    """The customer is X-Customer-ID; when a JWT authorizer is configured its `sub` claim wins."""
    authorizer = app.current_event.request_context.authorizer
    claims = authorizer.jwt_claim if authorizer is not None else None
    if claims and claims.get("sub"):
        return str(claims["sub"])
    if header_value is None:
        raise ValidationFailed("x-customer-id: Field required")
    return header_value


@app.post(
    "/checkout/sessions",
    summary="Open a checkout session and reserve its stock",
    responses=answers(
        answer(201, SessionOut, "the session, open; its stock is reserved at the warehouse until expires_at"),
        errors=(OutOfStockError, WarehouseUnavailableError, WarehouseTimeoutError),
    ),
)
@tracer.capture_method
def create_session(body: Annotated[CreateSessionRequest, Body()]) -> Response[str]:
    session = runtime().sessions.open(
        customer_id=body.customer_id,
        currency=body.currency,
        items=[LineItem(**i.model_dump()) for i in body.items],
        payment_method=body.payment_method,
        deadline=Deadline.from_context(app.lambda_context),
    )
    payload = session.model_dump(mode="json", exclude={"expires_at_epoch", "created_at", "order_id"})
    return json_response(HTTPStatus.CREATED, {**payload, "status": "open"})


@app.post(
    "/checkout/confirm",
    summary="Confirm a checkout: authorize, record, capture",
    responses=answers(
        answer(200, ConfirmAnswer, "this session was confirmed before: its order, as it stands"),
        answer(201, Confirmed, "authorized and captured: the order is confirmed"),
        answer(202, PaymentPending, "authorized; the capture is being retried (the order shows when it is done)"),
        errors=(
            PaymentDeclinedError,
            SessionNotFound,
            ConfirmInProgress,
            SessionClosed,
            PaymentOutcomeUnknownError,
            PaymentUnavailable,
            OrderNotRecorded,
            PaymentTimeout,
        ),
    ),
)
@tracer.capture_method
def confirm_checkout(
    x_session_id: Annotated[str, SESSION_ID],
    x_customer_id: Annotated[str | None, CUSTOMER_ID] = None,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    body: Annotated[ConfirmRequest | None, Body()] = None,
) -> Response[str]:
    customer_id = _customer(x_customer_id)
    result = runtime().confirmer.confirm(
        session_id=x_session_id,
        customer_id=customer_id,
        payment_method=body.payment_method if body else None,
        idempotency_key=idempotency_key,
        deadline=Deadline.from_context(app.lambda_context),
    )
    return json_response(result.http_status, result.body())


@app.get(
    "/orders/<order_id>",
    summary="An order with its saga history",
    responses=answers(answer(200, OrderOut, "the order and its saga history"), errors=(OrderNotFound,)),
)
@tracer.capture_method
def get_order(
    order_id: Annotated[
        str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, examples=["ord_1c2d3e4f"])
    ],
    x_customer_id: Annotated[str | None, CUSTOMER_ID] = None,
) -> Response[str]:
    order = runtime().confirmer.get_order(order_id, _customer(x_customer_id))
    return json_response(HTTPStatus.OK, order.public_view())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Outside the resolver on purpose: bad configuration fails the invocation loudly (Errors alarm),
    # naming the variable, instead of turning into a 500 answer.
    runtime()
    return refuse_unreadable(event) or app.resolve(event, context)
