"""Timing relations checked, not hoped for (ARCHITECTURE.md section 4): every relation the system depends on holds
for every value the template's parameters allow and for every samconfig environment, and the cold start refuses
what breaks one, naming both values."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkout.config import Settings
from checkout.failed_compensations import ALERT_CLAIM_SECONDS
from checkout.runtime import COMPENSATION_RETRY_LEASE_SECONDS, CONFIRM_LEASE_SECONDS
from tests.template.test_template import TEMPLATE_PATH, CloudFormationLoader, _function_timeout

SAMCONFIG = Path(__file__).resolve().parents[2] / "samconfig.toml"
# Lambda functions that call the providers, and so carry FUNCTION_TIMEOUT_SECONDS.
PROVIDER_CALLERS = ("ConfirmCheckoutFunction", "DlqProcessorFunction", "CaptureRetryFunction", "CompensationFunction")
# AWS advises a queue visibility timeout of at least six times the consuming function's Timeout.
VISIBILITY_FACTOR = 6


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE_PATH.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass


def environment(template: dict[str, Any], function: str, parameters: dict[str, Any]) -> dict[str, str]:
    """The environment `function` gets for the given parameter values (resources stand in as names)."""
    variables = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {}),
    }
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}

    def resolve(value: Any) -> str:
        if isinstance(value, dict) and "Ref" in value:
            ref = value["Ref"]
            if ref in template["Parameters"]:
                return str(parameters.get(ref, defaults[ref]))
            return f"resource-{ref}"
        return str(value)

    env = {name: resolve(value) for name, value in variables.items()}
    # Secrets Manager in AWS; the key itself locally. Either satisfies the key-source rule.
    env["PAYMENT_API_BASE_URL"] = "https://api.stripe.com"
    env["WAREHOUSE_API_BASE_URL"] = "https://warehouse.example.com"
    return env


def allowed_extremes(template: dict[str, Any], name: str) -> list[int]:
    spec = template["Parameters"][name]
    return [int(spec["MinValue"]), int(spec["Default"]), int(spec["MaxValue"])]


def test_every_provider_calling_function_is_told_its_own_timeout(template: dict[str, Any]) -> None:
    for name in PROVIDER_CALLERS:
        function = template["Resources"][name]
        variables = function["Properties"]["Environment"]["Variables"]
        assert int(variables["FUNCTION_TIMEOUT_SECONDS"]) == _function_timeout(template, function), name
    confirm = template["Resources"]["ConfirmCheckoutFunction"]
    globals_ = template["Globals"]["Function"]["Environment"]["Variables"]
    assert int(globals_["CONFIRM_TIMEOUT_SECONDS"]) == _function_timeout(template, confirm)


@pytest.mark.parametrize("function", PROVIDER_CALLERS)
def test_every_allowed_parameter_combination_passes_the_cold_start_checks(
    template: dict[str, Any], function: str
) -> None:
    # The parameters the relations involve, at their minimum, default and maximum
    names = ("PaymentTimeoutSeconds", "StaleSagaSeconds", "CompensationMaxRetries")
    for values in itertools.product(*(allowed_extremes(template, name) for name in names)):
        env = environment(template, function, dict(zip(names, values, strict=True)))
        env["PAYMENT_API_KEY_SECRET_ARN"] = "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"
        Settings.from_environ(env)  # raises, naming both values, if a relation breaks


@pytest.mark.parametrize("stage", ["default", "dev", "prod"])
def test_every_samconfig_environment_passes_the_cold_start_checks(template: dict[str, Any], stage: str) -> None:
    config = tomllib.loads(SAMCONFIG.read_text())
    overrides = config.get(stage, {}).get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
    parameters = dict(pair.split("=", 1) for pair in overrides.split())
    for function in PROVIDER_CALLERS:
        env = environment(template, function, parameters)
        env["PAYMENT_API_KEY_SECRET_ARN"] = "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"
        Settings.from_environ(env)


def test_the_largest_allowed_payment_timeout_fits_every_function(template: dict[str, Any]) -> None:
    payment = template["Parameters"]["PaymentTimeoutSeconds"]["MaxValue"]
    warehouse = Settings.model_fields["warehouse_timeout_seconds"].default
    for name in PROVIDER_CALLERS:
        timeout = _function_timeout(template, template["Resources"][name])
        assert payment + warehouse + 3 <= timeout, f"{name}: {payment} + {warehouse} + 3 s > Timeout {timeout}"


def test_leases_last_no_longer_than_their_functions(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert _function_timeout(template, resources["ConfirmCheckoutFunction"]) >= CONFIRM_LEASE_SECONDS
    dlq_timeout = _function_timeout(template, resources["DlqProcessorFunction"])
    assert dlq_timeout >= COMPENSATION_RETRY_LEASE_SECONDS
    # An alert claim outlives one publish with botocore's retries, and ends long before the next worker run.
    assert 15 < ALERT_CLAIM_SECONDS < 600


def test_recovery_never_takes_over_a_running_confirm(template: dict[str, Any]) -> None:
    confirm_timeout = _function_timeout(template, template["Resources"]["ConfirmCheckoutFunction"])
    assert int(template["Parameters"]["StaleSagaSeconds"]["MinValue"]) > confirm_timeout


def test_queue_visibility_is_six_times_the_processor_timeout_and_redrive_matches_the_retries(
    template: dict[str, Any],
) -> None:
    queue = template["Resources"]["FailedCompensationsQueue"]["Properties"]
    dlq_timeout = _function_timeout(template, template["Resources"]["DlqProcessorFunction"])
    assert queue["VisibilityTimeout"] >= VISIBILITY_FACTOR * dlq_timeout
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "CompensationMaxRetries"}
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["COMPENSATION_MAX_RETRIES"] == {"Ref": "CompensationMaxRetries"}
    # The processor's lease (its Timeout) ends before SQS shows the message again.
    assert math.ceil(COMPENSATION_RETRY_LEASE_SECONDS) < queue["VisibilityTimeout"]
