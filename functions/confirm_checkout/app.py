"""confirm_checkout: POST /checkout/sessions, POST /checkout/confirm, GET /orders/{order_id}."""

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponseContentModel, OpenAPIResponseContentSchema
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.api_models import ConfirmAnswer, ConfirmRequest, CreateSessionRequest
from checkout.deadline import Deadline
from checkout.http_api import answer_errors_as_json, json_response, refuse_oversized
from checkout.observability import logger, metrics, tracer
from checkout.orders import LineItem
from checkout.runtime import runtime

app = APIGatewayHttpResolver(enable_validation=True)
answer_errors_as_json(app)


def _customer(header_value: str) -> str:
    """The customer is X-Customer-ID; when a JWT authorizer is configured its `sub` claim wins."""
    authorizer = app.current_event.request_context.authorizer
    claims = authorizer.jwt_claim if authorizer is not None else None
    if claims and claims.get("sub"):
        return str(claims["sub"])
    return header_value


@app.post("/checkout/sessions", summary="Open a checkout session and reserve its stock")
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


_CONFIRMED: dict[str, OpenAPIResponseContentSchema | OpenAPIResponseContentModel] = {
    "application/json": {"model": ConfirmAnswer}
}


@app.post(
    "/checkout/confirm",
    summary="Confirm a checkout: authorize, record, capture",
    description=(
        "202 `requires_action`: the card needs 3-D Secure. The shop's page completes the challenge with Stripe.js "
        "`stripe.handleNextAction({clientSecret})` and calls confirm again, which answers 201 once captured, 402 if "
        "authentication failed (the session stays open), or the same 202 while the challenge is still waiting."
    ),
    responses={
        200: {"description": "this session was already confirmed: its order", "content": _CONFIRMED},
        201: {"description": "confirmed: authorized and captured", "content": _CONFIRMED},
        202: {
            "description": "payment_pending (capture retried later) or requires_action (3-D Secure)",
            "content": _CONFIRMED,
        },
    },
)
@tracer.capture_method
def confirm_checkout(
    x_session_id: Annotated[str, Header(min_length=1, max_length=128)],
    x_customer_id: Annotated[str, Header(min_length=1, max_length=128)],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    body: Annotated[ConfirmRequest | None, Body()] = None,
) -> Response[str]:
    result = runtime().confirmer.confirm(
        session_id=x_session_id,
        customer_id=_customer(x_customer_id),
        payment_method=body.payment_method if body else None,
        idempotency_key=idempotency_key,
        deadline=Deadline.from_context(app.lambda_context),
    )
    return json_response(result.http_status, result.body())


@app.get("/orders/<order_id>", summary="An order with its saga history")
@tracer.capture_method
def get_order(
    order_id: Annotated[str, Path(min_length=1, max_length=128)],
    x_customer_id: Annotated[str, Header(min_length=1, max_length=128)],
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
    return refuse_oversized(event) or app.resolve(event, context)
