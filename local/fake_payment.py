"""A fake of Stripe's PaymentIntents API (manual capture subset) with fault injection, for local runs and tests.

As strict as Stripe on everything the saga relies on (ARCHITECTURE.md section 6); each behaviour names the
Stripe doc page it follows. tests/contract/ states each behaviour once, against this fake and Stripe's test mode.
"""

import copy
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qs

from checkout.currencies import MAXIMUM_CHARGE, MINIMUM_CHARGE
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
)

DEFAULT_PORT = 12111
# docs.stripe.com/testing: test payment methods by id. Anything else is an unknown PaymentMethod.
SUCCEEDING_PAYMENT_METHODS = frozenset({"pm_card_visa", "pm_card_visa_debit", "pm_card_mastercard", "pm_card_amex"})
DECLINING_PAYMENT_METHODS = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
# docs.stripe.com/testing#regulatory-cards: these need 3-D Secure on every payment.
THREE_D_SECURE_PAYMENT_METHODS = frozenset({"pm_card_threeDSecure2Required", "pm_card_authenticationRequired"})
KNOWN_PAYMENT_METHODS = SUCCEEDING_PAYMENT_METHODS | set(DECLINING_PAYMENT_METHODS) | THREE_D_SECURE_PAYMENT_METHODS
# The version the fake's "account" defaults to when a request pins none (docs.stripe.com/api/versioning).
DEFAULT_API_VERSION = "2026-07-29.dahlia"
# docs.stripe.com/changelog/2023-08-16/automatic-payment-methods: from this version on, automatic payment
# methods are on by default, and a confirm at creation needs return_url unless redirects are ruled out.
AUTOMATIC_PAYMENT_METHODS_SINCE = "2023-08-16"
# docs.stripe.com/search#data-freshness: "data is generally searchable within 1 minute", longer during outages.
DEFAULT_SEARCH_LAG_SECONDS = 60.0
_INTENT = re.compile(r"/v1/payment_intents/([^/]+)")
_CHALLENGE = re.compile(r"/_3ds/([^/]+)")
_INTENT_ACTION = re.compile(r"/v1/payment_intents/([^/]+)/(capture|cancel)")
_ORDER_QUERY = re.compile(r"""\s*metadata\[(['"])order_id\1\]:(['"])(.*?)\2\s*""")
_CURRENCY = re.compile(r"[a-z]{3}")
_METADATA_KEY = re.compile(r"metadata\[([^\[\]]+)\]")
# Accepted and ignored: real Stripe needs some of them (e.g. payment_method_types[] or return_url
# with confirm=true), the fake has nothing to do with them.
_IGNORED = re.compile(r"expand\[\d*\]")
_EXPAND = re.compile(r"expand\[\d*\]")
# Stripe's window to capture an online card authorization: 7 days, after which the uncaptured charge is
# refunded (https://docs.stripe.com/payments/place-a-hold-on-a-payment-method#auth-and-capture). The charge
# says when: payment_method_details.card.capture_before
# (https://docs.stripe.com/api/charges/object#charge_object-payment_method_details-card-capture_before).
CAPTURE_WINDOW_SECONDS = 7 * 24 * 3600
_PAYMENT_METHOD_TYPE = re.compile(r"payment_method_types\[\d*\]")
# docs.stripe.com/api/payment_intents/cancel: the statuses an intent can be canceled from.
_CANCELABLE = {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
_CANCELLATION_REASONS = {"duplicate", "fraudulent", "requested_by_customer", "abandoned"}
_REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}


class FakeStripe(FakeServer):
    """Stripe PaymentIntents with manual capture: authorize, capture, cancel, retrieve, search, refund."""

    name = "fake-stripe"
    decline_operations: ClassVar[frozenset[str]] = frozenset({"authorize"})
    operations: ClassVar[frozenset[str]] = frozenset(
        {"authorize", "capture", "cancel", "retrieve", "search", "refund", "list_refunds"}
    )
    ledger_ops: ClassVar[frozenset[str]] = frozenset(
        {"authorized", "declined", "requires_action", "authentication_failed", "captured", "canceled", "refunded"}
    )

    def __init__(
        self,
        port: int = 0,
        *,
        verbose: bool = False,
        clock: Callable[[], float] = time.time,
        search_lag_seconds: float = DEFAULT_SEARCH_LAG_SECONDS,
    ) -> None:
        super().__init__(port, verbose=verbose, clock=clock)
        self._intents: dict[str, JsonObject] = {}
        self._refunds: dict[str, JsonObject] = {}
        self._charges: dict[str, JsonObject] = {}
        # Every state an intent went through, with when (the fake's clock): search serves the past.
        self._snapshots: dict[str, list[tuple[float, JsonObject]]] = {}
        self._search_lag = float(search_lag_seconds)
        self._default_lag = float(search_lag_seconds)

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
        """Ledger events of one kind: authorized, declined, requires_action, authentication_failed, captured,
        canceled or refunded."""
        return self._count_events(op, "order_id", order_id)

    @property
    def search_lag_seconds(self) -> float:
        return self._search_lag

    def set_search_lag(self, seconds: float) -> None:
        """How far behind the search index runs, in seconds of the fake's clock (0: no lag)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("search_lag_seconds must be a number of seconds >= 0")
        with self._lock:
            self._search_lag = float(seconds)

    def complete_challenge(self, intent_id: str, *, succeed: bool) -> JsonObject:
        """What the customer does in the 3-D Secure challenge (Stripe.js handleNextAction), test-only.

        Success: the card authorizes (`requires_capture`). Failure: the intent goes back to
        `requires_payment_method` with `last_payment_error` (docs.stripe.com/payments/3d-secure/authentication-flow).
        """
        with self._lock:
            intent = self._intents.get(intent_id)
            if intent is None:
                raise KeyError(intent_id)
            if intent["status"] != "requires_action":
                raise ValueError(f"{intent_id} is {intent['status']}, not requires_action")
            call = Call({}, (intent_id,), None, decline=False)
            event = {"id": intent_id, "order_id": _order(intent), "amount": intent["amount"]}
            if succeed:
                intent.update(status="requires_capture", amount_capturable=intent["amount"], next_action=None)
                intent["latest_charge"] = self._new_charge(intent, None)
                self._record_event("authorized", call, currency=intent["currency"], **event)
            else:
                intent.update(
                    status="requires_payment_method",
                    next_action=None,
                    payment_method=None,
                    last_payment_error={
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": "The provided PaymentMethod has failed authentication. You can provide "
                        "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                    },
                )
                self._record_event("authentication_failed", call, **event)
            self._snapshot(intent)
            return copy.deepcopy(intent)

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
            # docs.stripe.com/rate-limits: 429 from the rate limiter, before the idempotency layer (never stored).
            response = self._error(
                429, "rate_limit", "Too many requests (injected fault).", type="invalid_request_error"
            )
            response.store = False
            response.headers["Stripe-Should-Retry"] = "true"
            return response
        return self._error(status, "injected_fault", f"Injected fault: HTTP {status}.", type="api_error")

    def _key_in_use(self, key: str) -> Response:
        # docs.stripe.com/error-low-level#idempotency: a request still running under the key answers 409 and
        # stores nothing; the shared layer (local/fakes.py) answers it while the first request executes.
        return self._error(
            409,
            "idempotency_key_in_use",
            f"There is currently another in-progress request using this idempotency key ({key}). "
            "Please try again later.",
            type="idempotency_error",
        )

    def _key_reused(self, key: str) -> Response:
        # docs.stripe.com/api/idempotent_requests: the same key with other parameters is refused.
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
        if method == "GET" and path == "/v1/refunds":
            return Route("list_refunds", self._list_refunds)
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
        self._snapshots.clear()
        self._search_lag = self._default_lag

    def _snapshot(self, intent: JsonObject) -> None:
        self._snapshots.setdefault(intent["id"], []).append((self.clock(), copy.deepcopy(intent)))

    def _control_extra(self, request: Request) -> Response | None:
        if request.path == "/_settings":
            if request.method == "GET":
                return Response(200, {"search_lag_seconds": self.search_lag_seconds})
            if request.method == "POST":
                try:
                    spec = json.loads(request.body or b"null")
                    if not isinstance(spec, dict) or set(spec) - {"search_lag_seconds"}:
                        raise ValueError('body must be {"search_lag_seconds": <seconds>}')
                    if "search_lag_seconds" in spec:
                        self.set_search_lag(spec["search_lag_seconds"])
                except ValueError as exc:
                    return self._error(400, "invalid_settings", str(exc))
                return Response(200, {"search_lag_seconds": self.search_lag_seconds})
        if request.method == "POST" and (match := _CHALLENGE.fullmatch(request.path)):
            try:
                spec = json.loads(request.body or b"null")
            except ValueError:
                spec = None
            if not isinstance(spec, dict) or spec.get("outcome") not in ("complete", "fail"):
                return self._error(400, "invalid_challenge", 'Body must be {"outcome": "complete" | "fail"}.')
            try:
                intent = self.complete_challenge(match[1], succeed=spec["outcome"] == "complete")
            except KeyError:
                return self._missing(match[1])
            except ValueError as exc:
                return self._error(400, "payment_intent_unexpected_state", str(exc))
            return Response(200, intent)
        return None

    # ---- operations (run under the lock) ---------------------------------------------------------

    def _authorize(self, call: Call) -> Response:
        params: dict[str, str] = call.params
        problem = self._unknown_params(
            params,
            {
                "amount",
                "currency",
                "payment_method",
                "confirm",
                "capture_method",
                "description",
                "return_url",
                "automatic_payment_methods[enabled]",
                "automatic_payment_methods[allow_redirects]",
            },
            metadata=True,
            payment_method_types=True,
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
        # docs.stripe.com/currencies#minimum-and-maximum-charge-amounts
        if amount < MINIMUM_CHARGE.get(currency, 1):
            return self._invalid(
                f"Amount must be at least {MINIMUM_CHARGE[currency]} {currency}",
                code="amount_too_small",
                param="amount",
            )
        if amount > MAXIMUM_CHARGE:
            return self._invalid(
                f"Amount must be no more than {MAXIMUM_CHARGE} {currency}", code="amount_too_large", param="amount"
            )
        if params["confirm"] != "true":
            return self._invalid("This fake only supports confirm=true.", param="confirm")
        if params["capture_method"] != "manual":
            return self._invalid("This fake only supports capture_method=manual.", param="capture_method")
        redirects = self._redirect_problem(call, params)
        if redirects is not None:
            return redirects
        metadata = _metadata(params)
        order_id = metadata.get("order_id")
        if not order_id:
            return self._invalid(
                "Missing required param: metadata[order_id].", code="parameter_missing", param="metadata[order_id]"
            )
        payment_method = params["payment_method"]
        if payment_method not in KNOWN_PAYMENT_METHODS:
            # docs.stripe.com/api/errors: an id that names nothing is 400 resource_missing.
            return self._invalid(
                f"No such PaymentMethod: '{payment_method}'", code="resource_missing", param="payment_method"
            )

        decline_code = DECLINING_PAYMENT_METHODS.get(payment_method) or ("generic_decline" if call.decline else None)
        needs_action = decline_code is None and payment_method in THREE_D_SECURE_PAYMENT_METHODS
        intent_id = new_id("pi")
        status = "requires_action" if needs_action else "requires_capture"
        if decline_code:
            status = "requires_payment_method"
        held = status == "requires_capture"
        # docs.stripe.com/api/payment_intents/object: no refunded amount here (refunds are their own objects).
        intent: JsonObject = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": amount if held else 0,
            "amount_received": 0,
            "automatic_payment_methods": (
                {"enabled": True, "allow_redirects": params.get("automatic_payment_methods[allow_redirects]", "always")}
                if params.get("automatic_payment_methods[enabled]") == "true"
                else None
            ),
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "currency": currency,
            "status": status,
            "capture_method": "manual",
            "confirmation_method": "automatic",
            "payment_method": None if decline_code else payment_method,
            "description": params.get("description"),
            "metadata": metadata,
            "created": int(self.clock()),
            "canceled_at": None,
            "cancellation_reason": None,
            "last_payment_error": None,
            "latest_charge": None,
            "next_action": _next_action(params.get("return_url")) if needs_action else None,
            "livemode": False,
        }
        if held or decline_code:
            # docs.stripe.com/api/payment_intents/object#latest_charge: a confirm that reached the card made a
            # charge; one still waiting for 3-D Secure has none yet.
            intent["latest_charge"] = self._new_charge(intent, decline_code)
        event = {"id": intent["id"], "order_id": order_id, "amount": amount, "currency": currency}
        if decline_code is None:
            self._intents[intent["id"]] = intent
            self._snapshot(intent)
            self._record_event("requires_action" if needs_action else "authorized", call, **event)
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
        self._snapshot(intent)
        self._record_event("declined", call, decline_code=decline_code, **event)
        return Response(402, {"error": {**copy.deepcopy(error), "payment_intent": copy.deepcopy(intent)}})

    def _redirect_problem(self, call: Call, params: dict[str, str]) -> Response | None:
        """docs.stripe.com/changelog/2023-08-16/automatic-payment-methods: confirming at creation with automatic
        payment methods (the default since then) needs a return_url, unless redirects are ruled out."""
        enabled = params.get("automatic_payment_methods[enabled]")
        allow = params.get("automatic_payment_methods[allow_redirects]")
        if enabled not in (None, "true", "false"):
            return self._invalid(
                "Invalid boolean: automatic_payment_methods[enabled].", param="automatic_payment_methods[enabled]"
            )
        if allow not in (None, "always", "never"):
            return self._invalid(
                "Invalid automatic_payment_methods[allow_redirects]: must be one of always, never.",
                param="automatic_payment_methods[allow_redirects]",
            )
        if any(_PAYMENT_METHOD_TYPE.fullmatch(name) for name in params):
            return None  # explicit payment_method_types: automatic payment methods are off
        version = (call.version or DEFAULT_API_VERSION)[:10]
        automatic = enabled == "true" or (enabled is None and version >= AUTOMATIC_PAYMENT_METHODS_SINCE)
        if not automatic or params.get("return_url") or allow == "never":
            return None
        return self._invalid(
            "This PaymentIntent is configured to accept payment methods enabled in your Dashboard. Because some "
            "of these payment methods might redirect your customer off of your page, you must provide a "
            "`return_url`. If you don't want to accept redirect-based payment methods, set "
            "`automatic_payment_methods[enabled]` to `true` and `automatic_payment_methods[allow_redirects]` to "
            "`never` when creating Setup Intents and Payment Intents.",
            param="return_url",
        )

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
        self._snapshot(intent)
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
        if previous not in _CANCELABLE:
            return self._unexpected_state(intent, "cancel", ", ".join(sorted(_CANCELABLE)))
        intent.update(
            status="canceled",
            amount_capturable=0,
            canceled_at=int(self.clock()),
            cancellation_reason=reason,
            next_action=None,
        )
        charge = self._charges.get(intent["latest_charge"] or "")
        if charge is not None and previous == "requires_capture":
            # Cancelling an uncaptured charge refunds it in full (https://docs.stripe.com/refunds#cancel-payment).
            charge.update(refunded=True, amount_refunded=charge["amount"])
        self._snapshot(intent)
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
        # docs.stripe.com/search#data-freshness: the index runs behind; it serves each intent as it was
        # search_lag_seconds ago, and not at all if it is younger than that. Newest first, like Stripe.
        visible_at = self.clock() - self._search_lag
        found = []
        for intent_id in reversed(self._intents):
            seen = [snapshot for at, snapshot in self._snapshots.get(intent_id, []) if at <= visible_at]
            if seen and seen[-1]["metadata"].get("order_id") == order_id:
                found.append(seen[-1])
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
        refunded = sum(r["amount"] for r in self._refunds.values() if r["payment_intent"] == intent_id)
        remaining = intent["amount_received"] - refunded
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
        # docs.stripe.com/api/refunds/object: card refunds in test mode succeed at once.
        refund: JsonObject = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": intent.get("latest_charge"),
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "reason": reason,
            "status": "succeeded",
            "metadata": _metadata(params),
            "created": int(self.clock()),
        }
        self._refunds[refund["id"]] = refund
        # docs.stripe.com/api/charges/object: the refunded amount is on the charge, not the PaymentIntent.
        charge = self._charges[intent["latest_charge"]]
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self._record_event(
            "refunded", call, id=intent_id, refund_id=refund["id"], order_id=_order(intent), amount=amount
        )
        return Response(200, copy.deepcopy(refund))

    def _list_refunds(self, call: Call) -> Response:
        """docs.stripe.com/api/refunds/list: filtered by payment_intent, newest first."""
        params: dict[str, str] = call.params
        problem = self._unknown_params(params, {"payment_intent", "limit", "charge"}, metadata=False)
        if problem is not None:
            return problem
        limit = _positive_int(params.get("limit", "10"))
        if limit is None or limit > 100:
            return self._invalid("limit must be an integer between 1 and 100.", param="limit")
        intent_id = params.get("payment_intent")
        found = [r for r in reversed(self._refunds.values()) if intent_id is None or r["payment_intent"] == intent_id]
        return Response(
            200,
            {
                "object": "list",
                "url": "/v1/refunds",
                "data": copy.deepcopy(found[:limit]),
                "has_more": len(found) > limit,
            },
        )

    # ---- helpers ---------------------------------------------------------------------------------

    def _new_charge(self, intent: JsonObject, decline_code: str | None) -> str:
        """The charge a confirm creates (latest_charge): authorized and uncaptured, or failed on a decline.

        Shape: https://docs.stripe.com/api/charges/object (the fields the saga and the console read).
        """
        created = int(self.clock())
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

    def _unknown_params(
        self, params: dict[str, str], allowed: set[str], *, metadata: bool, payment_method_types: bool = False
    ) -> Response | None:
        for name in params:
            if name in allowed or _IGNORED.fullmatch(name) or (metadata and _METADATA_KEY.fullmatch(name)):
                continue
            if payment_method_types and _PAYMENT_METHOD_TYPE.fullmatch(name):
                continue
            return self._invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        return None


def _next_action(return_url: str | None) -> JsonObject:
    """docs.stripe.com/payments/3d-secure/authentication-flow: with a return_url the customer is redirected;
    without, Stripe.js shows the challenge in the page (handleNextAction)."""
    if return_url:
        return {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": "https://hooks.stripe.com/3d_secure_2/hosted", "return_url": return_url},
        }
    return {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}


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
