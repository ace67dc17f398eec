"""Configuration is validated once at cold start, and a bad value fails loudly, naming the variable."""

from __future__ import annotations

import pytest

from checkout.config import ConfigurationError, Settings
from checkout.deadline import Deadline, OutOfTime

BASE = {
    "ORDERS_TABLE_NAME": "orders",
    "FAILED_COMPENSATIONS_TABLE_NAME": "failed",
    "FAILED_COMPENSATIONS_QUEUE_URL": "https://sqs.example/queue",
    "ALERTS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:alerts",
    "WAREHOUSE_API_BASE_URL": "https://warehouse.example",
    "PAYMENT_API_KEY": "sk_test",
}


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_environ(BASE)

    assert str(settings.payment_api_base_url) == "https://api.stripe.com/"
    assert settings.payment_timeout_seconds == 15
    assert settings.capture_max_retries == 5
    assert (settings.capture_backoff_base_seconds, settings.capture_backoff_max_seconds) == (60, 1800)
    assert settings.compensation_max_retries == 3
    assert settings.stale_saga_seconds == 120
    assert settings.session_ttl_seconds == 1800
    assert settings.circuit_failure_threshold == 5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ORDERS_TABLE_NAME": None}, "ORDERS_TABLE_NAME"),
        ({"PAYMENT_TIMEOUT_SECONDS": "soon"}, "PAYMENT_TIMEOUT_SECONDS"),
        ({"WAREHOUSE_API_BASE_URL": "not a url"}, "WAREHOUSE_API_BASE_URL"),
        ({"PAYMENT_API_KEY": None}, "PAYMENT_API_KEY_SECRET_ARN"),
        ({"CAPTURE_BACKOFF_MAX_SECONDS": "10"}, "CAPTURE_BACKOFF_MAX_SECONDS"),
    ],
)
def test_a_missing_or_bad_value_names_the_variable(change: dict, named: str) -> None:
    environ = {k: v for k, v in {**BASE, **change}.items() if v is not None}

    with pytest.raises(ConfigurationError, match=named):
        Settings.from_environ(environ)


def test_a_call_timeout_never_outlives_the_invocation() -> None:
    assert Deadline(lambda: 28.0).call_timeout(15) == 15
    assert Deadline(lambda: 10.0).call_timeout(15) == pytest.approx(8.0)
    with pytest.raises(OutOfTime):
        Deadline(lambda: 2.2).call_timeout(15)


def test_the_handler_fails_loudly_on_bad_configuration(monkeypatch) -> None:
    from checkout.runtime import use_runtime
    from functions.confirm_checkout.app import lambda_handler
    from tests.apigw import http_event
    from tests.conftest import LambdaContext

    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PAYMENT_TIMEOUT_SECONDS", "-1")
    use_runtime(None)

    with pytest.raises(ConfigurationError, match="PAYMENT_TIMEOUT_SECONDS"):
        lambda_handler(http_event("GET", "/orders/ord_1", headers={"X-Customer-ID": "c"}), LambdaContext())


def test_search_lag_defaults_to_an_hour_and_an_empty_return_url_means_none() -> None:
    settings = Settings.from_environ({**BASE, "PAYMENT_RETURN_URL": ""})

    assert settings.payment_search_lag_seconds == 3600
    assert settings.payment_return_url is None


def test_a_return_url_must_be_a_url() -> None:
    with pytest.raises(ConfigurationError, match="PAYMENT_RETURN_URL"):
        Settings.from_environ({**BASE, "PAYMENT_RETURN_URL": "not a url"})


# --- timing relations (section 4), checked at cold start ----------------------------------------------


def test_a_payment_timeout_that_leaves_the_dlq_processor_no_time_fails_the_cold_start_naming_both() -> None:
    # Given the dlq_processor's 30 s Timeout and a payment timeout of 18 s (the template once allowed 25)
    env = {**BASE, "PAYMENT_TIMEOUT_SECONDS": "18", "FUNCTION_TIMEOUT_SECONDS": "30"}

    with pytest.raises(ConfigurationError) as raised:
        Settings.from_environ(env)

    message = str(raised.value)
    assert "PAYMENT_TIMEOUT_SECONDS (18)" in message
    assert "WAREHOUSE_TIMEOUT_SECONDS (10)" in message
    assert "FUNCTION_TIMEOUT_SECONDS (30)" in message


def test_a_stale_saga_time_within_the_confirm_timeout_fails_the_cold_start_naming_both() -> None:
    env = {**BASE, "STALE_SAGA_SECONDS": "20", "CONFIRM_TIMEOUT_SECONDS": "28"}

    with pytest.raises(ConfigurationError) as raised:
        Settings.from_environ(env)

    assert "STALE_SAGA_SECONDS (20)" in str(raised.value)
    assert "CONFIRM_TIMEOUT_SECONDS (28)" in str(raised.value)


def test_the_defaults_fit_every_function_timeout_of_the_template() -> None:
    for timeout in ("28", "30", "180"):
        Settings.from_environ({**BASE, "FUNCTION_TIMEOUT_SECONDS": timeout, "CONFIRM_TIMEOUT_SECONDS": "28"})
