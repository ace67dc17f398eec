"""confirm_checkout: POST /checkout/sessions, POST /checkout/confirm, GET /orders/{order_id}."""

import base64
import json
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from checkout.api_models import ConfirmRequest, CreateSessionRequest
from checkout.deadline import Deadline
from checkout.errors import CheckoutError, PayloadTooLarge
from checkout.observability import logger, metrics, tracer
from checkout.orders import LineItem
from checkout.runtime import runtime

MAX_BODY_BYTES = 64 * 1024

app = APIGatewayHttpResolver(enable_validation=True)


def _json(status: int, body: dict[str, Any]) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


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
    return _json(HTTPStatus.CREATED, {**payload, "status": "open"})


@app.post("/checkout/confirm", summary="Confirm a checkout: authorize, record, capture")
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
    return _json(result.http_status, result.body())


@app.get("/orders/<order_id>", summary="An order with its saga history")
@tracer.capture_method
def get_order(
    order_id: Annotated[str, Path(min_length=1, max_length=128)],
    x_customer_id: Annotated[str, Header(min_length=1, max_length=128)],
) -> Response[str]:
    order = runtime().confirmer.get_order(order_id, _customer(x_customer_id))
    return _json(HTTPStatus.OK, order.public_view())


@app.exception_handler(CheckoutError)
def _checkout_error(exc: CheckoutError) -> Response[str]:
    logger.info("request refused", extra={"error": exc.code, "detail": exc.message})
    return _json(exc.status, exc.body())


@app.exception_handler(RequestValidationError)
def _validation_error(exc: RequestValidationError) -> Response[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg') or err.get('type')}")
    message = "; ".join(problems) or "invalid request"
    return _json(422, {"error": "validation_error", "message": message})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[str]:
    logger.exception("unhandled error")
    return _json(500, {"error": "internal_error", "message": "something went wrong; the request can be retried"})


def _body_size(event: dict[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return len(base64.b64decode(body))
    return len(body.encode())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Outside the resolver on purpose: bad configuration fails the invocation loudly (Errors alarm),
    # naming the variable, instead of turning into a 500 answer.
    runtime()
    if _body_size(event) > MAX_BODY_BYTES:
        error = PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
        return {
            "statusCode": error.status,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": json.dumps(error.body()),
        }
    return app.resolve(event, context)
