"""What both HTTP APIs answer alike: strict JSON in, JSON out, `{"error", "message"}` errors with their status, the
body limit, and the OpenAPI declaration of every answer a route gives."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import operator
import re
from functools import cache
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from pydantic import Field, RootModel, create_model

from checkout.api_models import PATTERN_MEANINGS, ErrorBody
from checkout.errors import (
    CheckoutError,
    InternalError,
    InvalidBody,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from checkout.observability import logger

MAX_BODY_BYTES = 64 * 1024
# Where pydantic says a problem is; a client knows its own body, query and path without the prefix.
_LOCATION_PREFIXES = ("body", "query", "path", "header")
_UTF8 = {"utf-8", "utf8"}
# Any route may be sent a body or a bad parameter, and anything unexpected is a 500: every route answers these.
EVERY_ROUTE: tuple[type[CheckoutError], ...] = (
    InvalidBody,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    InternalError,
)


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body), headers=headers
    )


def strict_json(text: str) -> dict[str, Any]:
    """The body as a JSON object, or JSONDecodeError (a 422): no other top-level value, no duplicate keys, no NaN.

    The stdlib parser takes all three silently (the last duplicate wins), which lets two readers of one body disagree.
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise json.JSONDecodeError(f"duplicate key {key[:64]!r}", text, 0)
            seen[key] = value
        return seen

    def no_constant(name: str) -> Any:
        raise json.JSONDecodeError(f"{name} is not JSON", text, 0)

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except RecursionError as exc:
        raise json.JSONDecodeError("nested too deeply", text, 0) from exc
    if not isinstance(value, dict):
        raise json.JSONDecodeError(f"the body must be a JSON object, not {type(value).__name__}", text, 0)
    return value


class JsonApi(APIGatewayHttpResolver):
    """The resolver both handlers use: validated, strict JSON bodies, JSON answers for every refusal."""

    def __init__(self) -> None:
        super().__init__(enable_validation=True, json_body_deserializer=strict_json)
        answer_errors_as_json(self)
        self.exception_handler(NotFoundError)(self._no_route)

    def _convert_matches_into_route_keys(self, match: re.Match[str]) -> dict[str, str]:
        # Path parameters arrive as the client encoded them in rawPath; the API takes the decoded value.
        return {name: unquote(value, errors="replace") for name, value in match.groupdict().items()}

    def _no_route(self, _: NotFoundError) -> Response[str]:
        """404 for a path no route has (a trailing or doubled slash included), 405 for a method it does not take."""
        method, path = self.current_event.http_method.upper(), self.current_event.path
        routes = self._static_routes + self._dynamic_routes
        allowed = sorted({route.method for route in routes if route.rule.match(path)})
        shown = path if len(path) <= 200 else f"{path[:200]}…"
        if allowed:
            error: CheckoutError = MethodNotAllowed(f"{shown} takes {', '.join(allowed)}, not {method[:20]}")
            return json_response(error.status, error.body(), {"Allow": ", ".join(allowed)})
        error = RouteNotFound(f"no route {method[:20]} {shown}")
        return json_response(error.status, error.body())


def answer_errors_as_json(app: APIGatewayHttpResolver) -> None:
    """Domain errors, validation errors and anything unexpected all answer `{"error", "message"}`."""

    @app.exception_handler(CheckoutError)
    def _checkout_error(exc: CheckoutError) -> Response[str]:
        logger.info("request refused", extra={"error": exc.code, "detail": exc.message})
        return json_response(exc.status, exc.body())

    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported(_: RequestUnsupportedContentType) -> Response[str]:
        # refuse_unreadable answers these first; this is the resolver's own check, kept as the same answer.
        error = UnsupportedMediaType("send the body as application/json")
        return json_response(error.status, error.body())

    @app.exception_handler(RequestValidationError)
    def _validation_error(exc: RequestValidationError) -> Response[str]:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in _LOCATION_PREFIXES) or "body"
            if err.get("type") == "json_invalid":
                where = "body"
            detail = (err.get("ctx") or {}).get("error") if err.get("type") == "json_invalid" else None
            message = err.get("msg") or err.get("type")
            if err.get("type") == "string_pattern_mismatch":
                pattern = str((err.get("ctx") or {}).get("pattern"))
                message = f"must be {PATTERN_MEANINGS.get(pattern, 'in the format the API document gives')}"
            problems.append(f"{where}: {message}" + (f" ({detail})" if detail else ""))
        return json_response(422, {"error": "validation_error", "message": "; ".join(problems) or "invalid request"})

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response[str]:
        logger.exception("unhandled error")
        error = InternalError("something went wrong; the request can be retried")
        return json_response(error.status, error.body())


def _refusal(error: CheckoutError) -> dict[str, Any]:
    logger.info("request refused", extra={"error": error.code, "detail": error.message})
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(error.body()),
    }


def _is_json(content_type: str) -> bool:
    """`application/json`, optionally with `charset=utf-8`; JSON is UTF-8 (RFC 8259 section 8.1)."""
    media_type, *params = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != "application/json":
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in _UTF8:
            return False
    return True


def refuse_unreadable(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a body no route can read, before anything parses it; None when it can be read (then its
    Content-Type header is made the canonical `application/json`).

    413 over MAX_BODY_BYTES, 415 unless it is `application/json`, 400 when its bytes are not UTF-8.
    """
    raw = event.get("body")
    if not raw:
        return None
    try:
        data = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode()
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return _refusal(InvalidBody("the body could not be read"))
    if len(data) > MAX_BODY_BYTES:
        return _refusal(PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB"))
    headers = event.get("headers") or {}
    names = [name for name in headers if str(name).lower() == "content-type"]
    content_type = str(headers[names[0]]) if len(names) == 1 else ""
    if not _is_json(content_type):
        shown = content_type[:100] or "none"
        return _refusal(UnsupportedMediaType(f"send the body as application/json (Content-Type was {shown})"))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return _refusal(InvalidBody("the body is not UTF-8 text"))
    # Media types are case-insensitive (RFC 9110 8.3.1); the resolver's own check is not, so it gets the canonical one.
    headers[names[0]] = "application/json"
    return None


def use_jwt_subject(event: dict[str, Any], header: str) -> dict[str, Any]:
    """The event with `header` set to the JWT's `sub` claim when a JWT authorizer verified one (section 5: the
    claim wins), so the route's validation and code see one customer whichever way it was named."""
    claims = (((event.get("requestContext") or {}).get("authorizer") or {}).get("jwt") or {}).get("claims") or {}
    subject = claims.get("sub")
    if not subject:
        return event
    headers = {name: value for name, value in (event.get("headers") or {}).items() if name.lower() != header}
    return {**event, "headers": {**headers, header: str(subject)}}


# OpenAPI --------------------------------------------------------------------------------------------
def _pascal(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


@cache
def error_model(code: str, fields: tuple[tuple[str, str], ...]) -> type[ErrorBody]:
    """The body of one error code: `error` is that code, plus the fields its exception carries."""
    # Present when the error has one (e.g. order_id once an order exists), absent otherwise; never null.
    extra: dict[str, Any] = {name: (str, Field(default=None, description=doc)) for name, doc in fields}
    only_this_code: Any = Literal[code]
    model: type[ErrorBody] = create_model(
        f"{_pascal(code)}Body",
        __base__=ErrorBody,
        error=(only_this_code, Field(description="machine-readable code")),
        **extra,
    )
    return model


@cache
def either_error(models: tuple[type[ErrorBody], ...]) -> type[RootModel[Any]]:
    """One of several error bodies of a status, told apart by their `error` code."""
    one_of: Any = functools.reduce(operator.or_, models)
    union: Any = Annotated[one_of, Field(discriminator="error")]
    name = "Or".join(m.__name__.removesuffix("Body") for m in models) + "Body"
    base: Any = RootModel[union]
    model: Any = create_model(name, __base__=base)
    return model  # type: ignore[return-value]


# The success models a merged answer stands for, so a third answer of the same status joins them.
_ALTERNATIVES: dict[Any, tuple[Any, ...]] = {}


def _either_success(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    models: list[Any] = []
    for response in (first, second):
        model = response["content"]["application/json"]["model"]
        models.extend(_ALTERNATIVES.get(model, (model,)))
    one_of: Any = functools.reduce(operator.or_, models)
    name = "Or".join(m.__name__ for m in models)
    either: Any = create_model(name, __base__=RootModel[one_of])
    _ALTERNATIVES[either] = tuple(models)
    merged = {**first, **second, "description": f"{first['description']}; or {second['description']}"}
    merged["content"] = {"application/json": {"model": either}}
    if "links" in first or "links" in second:
        merged["links"] = {**first.get("links", {}), **second.get("links", {})}
    return merged


def _model_of(error: type[CheckoutError]) -> type[ErrorBody]:
    return error_model(error.code, tuple(error.fields.items()))


def answer(status: int, model: Any, description: str, links: dict[str, Any] | None = None) -> dict[int, Any]:
    """One success answer of a route, for `answers`; `links` (OpenAPI link objects) say which later request takes
    what from it, for clients and for schemathesis' stateful phase."""
    declared: dict[str, Any] = {"description": description, "content": {"application/json": {"model": model}}}
    if links:
        declared["links"] = links
    return {status: declared}


def answers(*successes: dict[int, Any], errors: tuple[type[CheckoutError], ...] = ()) -> dict[int, Any]:
    """Every answer a route gives, for its `responses=` (next to the route): its successes, the errors it raises,
    and the errors every route answers (EVERY_ROUTE). Errors of one status are a union told apart by `error`;
    two successes of one status (e.g. two kinds of 202) are one answer whose body is either model."""
    declared: dict[int, Any] = {}
    for success in successes:
        for status, response in success.items():
            if status in declared:
                response = _either_success(declared[status], response)
            declared[status] = response
    by_status: dict[int, list[type[CheckoutError]]] = {}
    for error in (*errors, *EVERY_ROUTE):
        if error.code not in {e.code for e in by_status.get(error.status, [])}:
            by_status.setdefault(error.status, []).append(error)
    for status, errors_of_status in sorted(by_status.items()):
        models = tuple(_model_of(e) for e in errors_of_status)
        model: Any = models[0] if len(models) == 1 else either_error(models)
        codes = ", ".join(e.code for e in errors_of_status)
        declared[status] = {"description": codes, "content": {"application/json": {"model": model}}}
    return dict(sorted(declared.items()))


def openapi_document(app: APIGatewayHttpResolver, **kwargs: Any) -> str:
    """The app's OpenAPI 3.1 document as JSON, tidied to say exactly what the API takes.

    Powertools writes an optional header or body as `anyOf: [X, null]`, but an optional one is simply absent (an
    explicit JSON null body is refused); and it always adds its own validation-error schemas, which no answer
    of ours uses (ours is `{"error", "message"}`).
    """
    document = json.loads(app.get_openapi_json_schema(**kwargs))
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if not parameter.get("required"):
                    parameter["schema"] = _without_null(parameter["schema"])
            body = operation.get("requestBody")
            if body is not None and not body.get("required"):
                for media in body["content"].values():
                    media["schema"] = _without_null(media["schema"])
    schemas = document.get("components", {}).get("schemas", {})
    text = json.dumps(document["paths"])
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        if f'"#/components/schemas/{unused}"' not in text:
            schemas.pop(unused, None)
    return json.dumps(document, indent=2)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**options[0], **rest}
