"""A fake of Stripe's PaymentIntents API (manual capture subset) with fault injection, for local runs and tests."""

import copy
import re
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qs

from local.fakes import (
    BadRequest,
    Call,
    FakeServer,
    JsonObject,
    Request,
    Response,
    Route,
    new_id,
    serve_main,
    utc_now,
)

DEFAULT_PORT = 12111
DECLINING_PAYMENT_METHODS = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
_INTENT = re.compile(r"/v1/payment_intents/([^/]+)")
_INTENT_ACTION = re.compile(r"/v1/payment_intents/([^/]+)/(capture|cancel)")
_ORDER_QUERY = re.compile(r"""\s*metadata\[(['"])order_id\1\]:(['"])(.*?)\2\s*""")
_CURRENCY = re.compile(r"[a-z]{3}")
_METADATA_KEY = re.compile(r"metadata\[([^\[\]]+)\]")
# Accepted and ignored: real Stripe needs some of them (e.g. payment_method_types[] or return_url
# with confirm=true), the fake has nothing to do with them.
_IGNORED = re.compile(r"expand\[\d*\]|payment_method_types\[\d*\]|automatic_payment_methods\[[a-z_]+\]")
_EXPAND = re.compile(r"expand\[\d*\]")
# Stripe's window to capture an online card authorization: 7 days, after which the uncaptured charge is
# refunded (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method#auth-and-capture). The charge
# says when: payment_method_details.card.capture_before
# (https://docs.stripe.com/api/charges/object#charge_object-payment_method_details-card-capture_before).
CAPTURE_WINDOW_SECONDS = 7 * 24 * 3600
_CANCELLATION_REASONS = {"duplicate", "fraudulent", "requested_by_customer", "abandoned"}
_REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}


class FakeStripe(FakeServer):
    """Stripe PaymentIntents with manual capture: authorize, capture, cancel, retrieve, search, refund."""

    name = "fake-stripe"
    operations: ClassVar[frozenset[str]] = frozenset({"authorize", "capture", "cancel", "retrieve", "search", "refund"})
    decline_operations: ClassVar[frozenset[str]] = frozenset({"authorize"})
    ledger_ops: ClassVar[frozenset[str]] = frozenset({"authorized", "declined", "captured", "canceled", "refunded"})

    def __init__(self, port: int = 0, *, verbose: bool = False) -> None:
        super().__init__(port, verbose=verbose)
        self._intents: dict[str, JsonObject] = {}
        self._refunds: dict[str, JsonObject] = {}
        self._charges: dict[str, JsonObject] = {}

    # ---- Python API ------------------------------------------------------------------------------

    @property
    def intents(self) -> dict[str, JsonObject]:
        """id → PaymentIntent, in creation order (a copy)."""
        with self._lock:
            return copy.deepcopy(self._intents)

    @property
    def refunds(self) -> dict[str, JsonObject]:
        """id → Refund, in creation order (a copy)."""
        with self._lock:
            return copy.deepcopy(self._refunds)

    def intent_for_order(self, order_id: str) -> list[JsonObject]:
        """Every intent whose metadata order_id is this order, oldest first (copies)."""
        with self._lock:
            return [copy.deepcopy(i) for i in self._intents.values() if i["metadata"].get("order_id") == order_id]

    def count(self, op: str, order_id: str | None = None) -> int:
        """Ledger events of one kind: authorized, declined, captured, canceled or refunded."""
        return self._count_events(op, "order_id", order_id)

    # ---- provider shape --------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str, **extra: Any) -> Response:
        error_type = extra.pop("type", None) or _error_type(status)
        error: JsonObject = {"type": error_type, "code": code, "message": message, **extra}
        return Response(status, {"error": error})

    def _invalid(self, message: str, *, code: str = "parameter_invalid", param: str | None = None) -> Response:
        response = self._error(400, code, message, **({"param": param} if param else {}))
        response.store = False
        return response

    def _fault_response(self, status: int) -> Response:
        if status == 429:
            return self._error(429, "rate_limit", "Too many requests (injected fault).", type="invalid_request_error")
        return self._error(status, "injected_fault", f"Injected fault: HTTP {status}.", type="api_error")

    def _key_in_use(self, key: str) -> Response:
        return self._error(
            409,
            "idempotency_key_in_use",
            f"There is currently another in-progress request using this idempotency key ({key}). "
            "Please try again later.",
            type="idempotency_error",
        )

    def _key_reused(self, key: str) -> Response:
        return self._error(
            400,
            "idempotency_key_reused",
            f"Keys for idempotent requests can only be used with the same parameters they were first used "
            f"with. Try using a key other than '{key}' if you meant to execute a different request.",
            type="idempotency_error",
        )

    def _authenticate(self, request: Request) -> Response | None:
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return None
        return self._error(
            401,
            "api_key_missing",
            "You did not provide an API key. Provide it in the Authorization header, using Bearer auth "
            "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            type="invalid_request_error",
        )

    def _route(self, method: str, path: str) -> Route | None:
        if method == "POST" and path == "/v1/payment_intents":
            return Route("authorize", self._authorize)
        if method == "GET" and path == "/v1/payment_intents/search":
            return Route("search", self._search)
        if method == "POST" and path == "/v1/refunds":
            return Route("refund", self._refund)
        if method == "GET" and (match := _INTENT.fullmatch(path)):
            return Route("retrieve", self._retrieve, (match[1],))
        if method == "POST" and (match := _INTENT_ACTION.fullmatch(path)):
            return Route(match[2], self._capture if match[2] == "capture" else self._cancel, (match[1],))
        return None

    def _parse(self, request: Request) -> dict[str, str]:
        if request.method == "GET":
            pairs = request.query
        else:
            try:
                pairs = parse_qs(request.body.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise BadRequest(self._invalid("Request body must be UTF-8 form encoded.")) from None
        # Stripe takes the last value of a repeated scalar parameter.
        return {name: values[-1] for name, values in pairs.items()}

    def _reset_state(self) -> None:
        self._intents.clear()
        self._refunds.clear()
        self._charges.clear()

    # ---- operations (run under the lock) ---------------------------------------------------------

    def _authorize(self, call: Call) -> Response:
        params: dict[str, str] = call.params
        problem = self._unknown_params(
            params,
            {"amount", "currency", "payment_method", "confirm", "capture_method", "description", "return_url"},
            metadata=True,
        )
        if problem is not None:
            return problem
        for name in ("amount", "currency", "payment_method", "confirm", "capture_method"):
            if not params.get(name):
                return self._invalid(f"Missing required param: {name}.", code="parameter_missing", param=name)
        amount = _positive_int(params["amount"])
        if amount is None:
            return self._invalid("Invalid integer: amount must be a positive integer.", param="amount")
        currency = params["currency"].lower()
        if not _CURRENCY.fullmatch(currency):
            return self._invalid(f"Invalid currency: {params['currency']}.", param="currency")
        if params["confirm"] != "true":
            return self._invalid("This fake only supports confirm=true.", param="confirm")
        if params["capture_method"] != "manual":
            return self._invalid("This fake only supports capture_method=manual.", param="capture_method")
        metadata = _metadata(params)
        order_id = metadata.get("order_id")
        if not order_id:
            return self._invalid(
                "Missing required param: metadata[order_id].", code="parameter_missing", param="metadata[order_id]"
            )

        payment_method = params["payment_method"]
        decline_code = DECLINING_PAYMENT_METHODS.get(payment_method) or ("generic_decline" if call.decline else None)
        intent: JsonObject = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0 if decline_code else amount,
            "amount_received": 0,
            "amount_refunded": 0,
            "currency": currency,
            "status": "requires_payment_method" if decline_code else "requires_capture",
            "capture_method": "manual",
            "confirmation_method": "automatic",
            "payment_method": None if decline_code else payment_method,
            "description": params.get("description"),
            "metadata": metadata,
            "created": int(utc_now().timestamp()),
            "canceled_at": None,
            "cancellation_reason": None,
            "last_payment_error": None,
            "livemode": False,
        }
        intent["latest_charge"] = self._new_charge(intent, decline_code)
        event = {"id": intent["id"], "order_id": order_id, "amount": amount, "currency": currency}
        if decline_code is None:
            self._intents[intent["id"]] = intent
            self._record_event("authorized", call, **event)
            return Response(200, copy.deepcopy(intent))

        error: JsonObject = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": "Your card was declined.",
            "payment_method": {"id": payment_method, "object": "payment_method"},
        }
        intent["last_payment_error"] = error
        self._intents[intent["id"]] = intent
        self._record_event("declined", call, decline_code=decline_code, **event)
        return Response(402, {"error": {**copy.deepcopy(error), "payment_intent": copy.deepcopy(intent)}})

    def _capture(self, call: Call) -> Response:
        problem = self._unknown_params(call.params, {"amount_to_capture"}, metadata=False)
        if problem is not None:
            return problem
        intent = self._intents.get(call.args[0])
        if intent is None:
            return self._missing(call.args[0])
        if intent["status"] != "requires_capture":
            return self._unexpected_state(intent, "capture", "requires_capture")
        amount = intent["amount"]
        if "amount_to_capture" in call.params:
            amount = _positive_int(call.params["amount_to_capture"])
            if amount is None or amount > intent["amount"]:
                return self._invalid(
                    "amount_to_capture must be a positive integer no greater than the amount authorized.",
                    param="amount_to_capture",
                )
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        self._charges[intent["latest_charge"]].update(captured=True, amount_captured=amount)
        self._record_event("captured", call, id=intent["id"], order_id=_order(intent), amount=amount)
        return Response(200, copy.deepcopy(intent))

    def _cancel(self, call: Call) -> Response:
        problem = self._unknown_params(call.params, {"cancellation_reason"}, metadata=False)
        if problem is not None:
            return problem
        reason = call.params.get("cancellation_reason")
        if reason is not None and reason not in _CANCELLATION_REASONS:
            return self._invalid(f"Invalid cancellation_reason: {reason}.", param="cancellation_reason")
        intent = self._intents.get(call.args[0])
        if intent is None:
            return self._missing(call.args[0])
        previous = intent["status"]
        if previous not in {"requires_capture", "requires_payment_method"}:
            return self._unexpected_state(intent, "cancel", "requires_capture or requires_payment_method")
        intent.update(
            status="canceled",
            amount_capturable=0,
            canceled_at=int(utc_now().timestamp()),
            cancellation_reason=reason,
        )
        charge = self._charges[intent["latest_charge"]]
        if previous == "requires_capture":
            # Cancelling an uncaptured charge refunds it in full (https://docs.stripe.com/refunds#cancel-payment).
            charge.update(refunded=True, amount_refunded=charge["amount"])
        self._record_event(
            "canceled",
            call,
            id=intent["id"],
            order_id=_order(intent),
            amount=intent["amount"],
            released=intent["amount"] if previous == "requires_capture" else 0,
            previous_status=previous,
        )
        return Response(200, copy.deepcopy(intent))

    def _retrieve(self, call: Call) -> Response:
        # Only `expand[]` is a parameter of retrieve (https://docs.stripe.com/api/payment_intents/retrieve); of
        # the expandable fields the fake serves latest_charge (https://docs.stripe.com/api/expanding_objects).
        expand: list[str] = []
        for name, value in call.params.items():
            if not _EXPAND.fullmatch(name):
                return self._invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
            if value != "latest_charge":
                return self._invalid(
                    f"This property cannot be expanded ({value}). (This fake expands latest_charge only.)", param=name
                )
            expand.append(value)
        intent = self._intents.get(call.args[0])
        if intent is None:
            return self._missing(call.args[0])
        answer = copy.deepcopy(intent)
        if expand and answer.get("latest_charge"):
            answer["latest_charge"] = copy.deepcopy(self._charges[answer["latest_charge"]])
        return Response(200, answer)

    def _search(self, call: Call) -> Response:
        params: dict[str, str] = call.params
        problem = self._unknown_params(params, {"query", "limit", "page"}, metadata=False)
        if problem is not None:
            return problem
        query = params.get("query")
        if not query:
            return self._invalid("Missing required param: query.", code="parameter_missing", param="query")
        match = _ORDER_QUERY.fullmatch(query)
        if match is None:
            return self._invalid(
                "This fake only supports queries of the form metadata['order_id']:'<order_id>'.", param="query"
            )
        limit = _positive_int(params.get("limit", "10"))
        if limit is None or limit > 100:
            return self._invalid("limit must be an integer between 1 and 100.", param="limit")
        order_id = match[3]
        # Newest first, like Stripe; creation order breaks ties within one second.
        found = [i for i in reversed(self._intents.values()) if i["metadata"].get("order_id") == order_id]
        return Response(
            200,
            {
                "object": "search_result",
                "url": "/v1/payment_intents/search",
                "data": copy.deepcopy(found[:limit]),
                "has_more": len(found) > limit,
                "next_page": None,
            },
        )

    def _refund(self, call: Call) -> Response:
        params: dict[str, str] = call.params
        problem = self._unknown_params(params, {"payment_intent", "amount", "reason"}, metadata=True)
        if problem is not None:
            return problem
        intent_id = params.get("payment_intent")
        if not intent_id:
            return self._invalid(
                "Missing required param: payment_intent.", code="parameter_missing", param="payment_intent"
            )
        reason = params.get("reason")
        if reason is not None and reason not in _REFUND_REASONS:
            return self._invalid(f"Invalid reason: {reason}.", param="reason")
        requested = None
        if "amount" in params:
            requested = _positive_int(params["amount"])
            if requested is None:
                return self._invalid("Invalid integer: amount must be a positive integer.", param="amount")
        intent = self._intents.get(intent_id)
        if intent is None:
            return self._missing(intent_id, param="payment_intent")
        if intent["status"] != "succeeded":
            return self._unexpected_state(intent, "refund", "succeeded")
        remaining = intent["amount_received"] - intent["amount_refunded"]
        if remaining <= 0:
            return self._error(
                400,
                "charge_already_refunded",
                f"PaymentIntent {intent_id} has already been refunded.",
                type="invalid_request_error",
            )
        amount = remaining if requested is None else requested
        if amount > remaining:
            return self._error(
                400,
                "amount_too_large",
                f"Refund amount ({amount}) is greater than unrefunded amount ({remaining}).",
                type="invalid_request_error",
                param="amount",
            )
        refund: JsonObject = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "reason": reason,
            "status": "succeeded",
            "metadata": _metadata(params),
            "created": int(utc_now().timestamp()),
        }
        self._refunds[refund["id"]] = refund
        intent["amount_refunded"] += amount
        charge = self._charges[intent["latest_charge"]]
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self._record_event(
            "refunded", call, id=intent_id, refund_id=refund["id"], order_id=_order(intent), amount=amount
        )
        return Response(200, copy.deepcopy(refund))

    # ---- helpers ---------------------------------------------------------------------------------

    def _new_charge(self, intent: JsonObject, decline_code: str | None) -> str:
        """The charge a confirm creates (latest_charge): authorized and uncaptured, or failed on a decline.

        Shape: https://docs.stripe.com/api/charges/object (the fields the saga and the console read).
        """
        created = intent["created"]
        charge: JsonObject = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "currency": intent["currency"],
            "captured": False,
            "refunded": False,
            "paid": decline_code is None,
            "status": "failed" if decline_code else "succeeded",
            "failure_code": "card_declined" if decline_code else None,
            "payment_intent": intent["id"],
            "created": created,
            "payment_method_details": {
                "type": "card",
                "card": {
                    "brand": "visa",
                    "last4": "4242",
                    "capture_before": None if decline_code else created + CAPTURE_WINDOW_SECONDS,
                },
            },
        }
        self._charges[charge["id"]] = charge
        return str(charge["id"])

    def _missing(self, object_id: str, *, param: str = "intent") -> Response:
        return self._error(
            404,
            "resource_missing",
            f"No such payment_intent: '{object_id}'",
            type="invalid_request_error",
            param=param,
        )

    def _unexpected_state(self, intent: JsonObject, action: str, expected: str) -> Response:
        return self._error(
            400,
            "payment_intent_unexpected_state",
            f"This PaymentIntent's {action} could not be performed because it has a status of "
            f"{intent['status']}; it must have a status of {expected}.",
            type="invalid_request_error",
            payment_intent=copy.deepcopy(intent),
        )

    def _unknown_params(self, params: dict[str, str], allowed: set[str], *, metadata: bool) -> Response | None:
        for name in params:
            if name in allowed or _IGNORED.fullmatch(name) or (metadata and _METADATA_KEY.fullmatch(name)):
                continue
            return self._invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        return None


def _error_type(status: int) -> str:
    if status == 402:
        return "card_error"
    return "api_error" if status >= 500 else "invalid_request_error"


def _positive_int(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def _metadata(params: dict[str, str]) -> dict[str, str]:
    return {match[1]: value for name, value in params.items() if (match := _METADATA_KEY.fullmatch(name))}


def _order(intent: JsonObject) -> str | None:
    order_id: str | None = intent["metadata"].get("order_id")
    return order_id


def main(argv: Sequence[str] | None = None) -> int:
    return serve_main(lambda port, verbose: FakeStripe(port, verbose=verbose), DEFAULT_PORT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
