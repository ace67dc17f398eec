"""Deployment settings in template.yaml: gradual rollout behind an alias, SnapStart, the PagerDuty subscription."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.template.test_template import TEMPLATE_PATH, CloudFormationLoader, _of_type

ROOT = TEMPLATE_PATH.parent
PREDEFINED_CANARIES = {"Canary10Percent5Minutes", "Canary10Percent10Minutes", "Canary10Percent15Minutes"}
# SnapStart's limits (https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html#snapstart-runtimes).
SNAPSTART_RUNTIMES = re.compile(r"^(python3\.(1[2-9])|java(11|17|21|25)|dotnet(8|9|10))$")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE_PATH.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


def _functions(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _of_type(resources, "AWS::Serverless::Function")


def test_every_function_is_published_behind_the_live_alias_and_rolled_out_as_a_canary(
    resources: dict[str, Any],
) -> None:
    for name, function in _functions(resources).items():
        props = function["Properties"]
        assert props.get("AutoPublishAlias") == "live", name
        kind = props["DeploymentPreference"]["Type"]
        if isinstance(kind, dict):
            config = resources[kind["Ref"]]
            assert config["Type"] == "AWS::CodeDeploy::DeploymentConfig", name
            assert config["Properties"]["ComputePlatform"] == "Lambda"
            assert config["Properties"]["TrafficRoutingConfig"]["Type"] == "TimeBasedCanary", name
        else:
            assert kind in PREDEFINED_CANARIES, f"{name} does not deploy a canary first: {kind}"


def test_a_rollout_is_rolled_back_by_its_own_functions_errors_alarm(resources: dict[str, Any]) -> None:
    for name, function in _functions(resources).items():
        alarms = [resources[ref["Ref"]] for ref in function["Properties"]["DeploymentPreference"]["Alarms"]]
        watched = [
            alarm
            for alarm in alarms
            if alarm["Properties"]["MetricName"] == "Errors"
            and {"Name": "FunctionName", "Value": {"Ref": name}} in alarm["Properties"]["Dimensions"]
        ]
        assert watched, f"{name}'s rollout is not watched by its Errors alarm"


def test_workers_reach_a_new_version_with_one_percent_of_their_runs_first(resources: dict[str, Any]) -> None:
    for name in ("CaptureRetryFunction", "CompensationFunction", "DlqProcessorFunction"):
        kind = resources[name]["Properties"]["DeploymentPreference"]["Type"]
        canary = resources[kind["Ref"]]["Properties"]["TrafficRoutingConfig"]["TimeBasedCanary"]
        assert canary["CanaryPercentage"] == 1, name
        assert canary["CanaryInterval"] >= 5, name


def test_only_the_confirm_function_uses_snapstart_and_within_its_limits(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    globals_ = template["Globals"]["Function"]
    for name, function in _functions(resources).items():
        props = function["Properties"]
        if name != "ConfirmCheckoutFunction":
            assert "SnapStart" not in props, name
            continue
        assert props["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        assert SNAPSTART_RUNTIMES.match(props.get("Runtime", globals_["Runtime"]))
        assert props.get("Architectures", globals_["Architectures"]) in (["arm64"], ["x86_64"])
        # SnapStart does not support provisioned concurrency, EFS, or ephemeral storage above 512 MB.
        assert "ProvisionedConcurrencyConfig" not in props
        assert "FileSystemConfigs" not in props
        assert int(props.get("EphemeralStorage", {}).get("Size", 512)) <= 512


def test_pagerduty_gets_the_alerts_over_https_only_when_its_url_is_given(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    parameter = template["Parameters"]["PagerDutyIntegrationUrl"]
    assert parameter["Default"] == ""
    assert parameter["NoEcho"] is True  # the URL holds the integration key
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("")
    assert pattern.fullmatch("https://events.pagerduty.com/integration/0123abcdef456789/enqueue")
    assert pattern.fullmatch("https://events.eu.pagerduty.com/integration/0123abcdef456789/enqueue")
    assert not pattern.fullmatch("http://events.pagerduty.com/integration/0123abcdef456789/enqueue")
    assert not pattern.fullmatch("https://evil.example/integration/0123abcdef456789/enqueue")

    subscription = resources["AlertsPagerDutySubscription"]
    assert subscription["Condition"] == "HasPagerDuty"
    assert template["Conditions"]["HasPagerDuty"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PagerDutyIntegrationUrl"}, ""]}]
    }
    props = subscription["Properties"]
    assert props["Protocol"] == "https"
    assert props["TopicArn"] == {"Ref": "AlertsTopic"}
    assert props["Endpoint"] == {"Ref": "PagerDutyIntegrationUrl"}
    # PagerDuty reads SNS's own envelope (confirmation, Subject, Message): never raw delivery.
    assert not props.get("RawMessageDelivery")


def _sam_translator_python() -> Path:
    tools = Path(os.environ.get("UV_TOOL_DIR", ROOT / ".tools" / "uv-tools"))
    return tools / "aws-sam-cli" / "bin" / "python"


TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class Policies:
    def load(self):
        names = ["AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess", "AWSLambdaSQSQueueExecutionRole",
                 "AWSCodeDeployRoleForLambda"]
        return {name: f"arn:aws:iam::aws:policy/service-role/{name}" for name in names}

template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():
    for key in ("CodeUri", "ContentUri"):
        if key in resource.get("Properties", {}):
            resource["Properties"][key] = "s3://bucket/code.zip"
print(json.dumps(transform(template, {"AWS::Region": "us-east-1"}, Policies())))
"""


def test_schedules_the_sqs_event_source_and_the_routes_all_invoke_the_alias() -> None:
    # SAM's own translator (in the isolated aws-sam-cli tool `make validate` installs), as `sam deploy` runs it.
    python = _sam_translator_python()
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make bootstrap` (it installs aws-sam-cli)")
    done = subprocess.run(
        [str(python), "-c", TRANSLATE, str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
        timeout=120,
    )
    translated = json.loads(done.stdout)["Resources"]
    rules = _of_type(translated, "AWS::Events::Rule")
    assert rules
    for name, rule in rules.items():
        [target] = rule["Properties"]["Targets"]
        assert target["Arn"]["Ref"].endswith("Aliaslive"), name
    [mapping] = _of_type(translated, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["FunctionName"] == {"Ref": "DlqProcessorFunctionAliaslive"}
    paths = translated["CheckoutHttpApi"]["Properties"]["Body"]["paths"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            uri = operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            assert "Aliaslive}" in uri, f"{method.upper()} {path} invokes {uri}"
    groups = _of_type(translated, "AWS::CodeDeploy::DeploymentGroup")
    assert len(groups) == len(_of_type(translated, "AWS::Lambda::Alias")) == 5
