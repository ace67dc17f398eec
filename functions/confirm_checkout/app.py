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
    RequiresAction,
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
    WarehouseTimeoutError,
    WarehouseUnavailableError,
)
from checkout.http_api import JsonApi, answer, answers, json_response, refuse_unreadable, use_jwt_subject
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
        "the customer (printable ASCII without spaces, at most 128 characters). When the API has a JWT authorizer,"
        " the token's `sub` claim is the customer and replaces whatever this header says (it may then be omitted)"
    ),
    examples=["cus_1"],
)
IDEMPOTENCY_KEY = Header(
    min_length=1,
    max_length=MAX_TOKEN_LENGTH,
    pattern=TOKEN_PATTERN,
    description="the same key resumes the same attempt (printable ASCII without spaces, at most 255 characters)",
)


# The order a confirm answered, read back by the same customer.
ORDER_LINK = {
    "GetOrder": {
        "operationId": "get_order",
        "parameters": {
            "path.order_id": "$response.body#/order_id",
            "header.x-customer-id": "$request.header.x-customer-id",
        },
    }
}


@app.post(
    "/checkout/sessions",
    operation_id="create_session",
    summary="Open a checkout session and reserve its stock",
    responses=answers(
        answer(
            201,
            SessionOut,
            "the session, open; its stock is reserved at the warehouse until expires_at",
            links={
                "ConfirmSession": {
                    "operationId": "confirm_checkout",
                    "parameters": {
                        "header.x-session-id": "$response.body#/session_id",
                        "header.x-customer-id": "$response.body#/customer_id",
                    },
                }
            },
        ),
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
    operation_id="confirm_checkout",
    summary="Confirm a checkout: authorize, record, capture",
    description=(
        "202 `requires_action`: the card needs 3-D Secure. The shop's page completes the challenge with Stripe.js "
        "`stripe.handleNextAction({clientSecret})` and calls confirm again, which answers 201 once captured, 402 if "
        "authentication failed (the session stays open), or the same 202 while the challenge is still waiting."
    ),
    responses=answers(
        answer(200, ConfirmAnswer, "this session was confirmed before: its order, as it stands", ORDER_LINK),
        answer(201, Confirmed, "authorized and captured: the order is confirmed", ORDER_LINK),
        answer(
            202,
            PaymentPending,
            "authorized; the capture is being retried (the order shows when it is done)",
            ORDER_LINK,
        ),
        answer(
            202,
            RequiresAction,
            "the card needs 3-D Secure: complete it with Stripe.js handleNextAction, then confirm again",
            ORDER_LINK,
        ),
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
    x_customer_id: Annotated[str, CUSTOMER_ID],
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
    body: Annotated[ConfirmRequest | None, Body()] = None,
) -> Response[str]:
    result = runtime().confirmer.confirm(
        session_id=x_session_id,
        customer_id=x_customer_id,
        payment_method=body.payment_method if body else None,
        idempotency_key=idempotency_key,
        deadline=Deadline.from_context(app.lambda_context),
    )
    return json_response(result.http_status, result.body())


@app.get(
    "/orders/<order_id>",
    operation_id="get_order",
    summary="An order with its saga history",
    responses=answers(answer(200, OrderOut, "the order and its saga history"), errors=(OrderNotFound,)),
)
@tracer.capture_method
def get_order(
    order_id: Annotated[
        str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, examples=["ord_1c2d3e4f"])
    ],
    x_customer_id: Annotated[str, CUSTOMER_ID],
) -> Response[str]:
    order = runtime().confirmer.get_order(order_id, x_customer_id)
    return json_response(HTTPStatus.OK, order.public_view())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Outside the resolver on purpose: bad configuration fails the invocation loudly (Errors alarm),
    # naming the variable, instead of turning into a 500 answer.
    runtime()
    return refuse_unreadable(event) or app.resolve(use_jwt_subject(event, "x-customer-id"), context)
