"""What operators rely on in template.yaml: logging, durability, retries, auth, wiring, outputs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"

# Every variable the code reads, and the parameter that feeds it (None: a resource or a constant).
CODE_ENVIRONMENT: dict[str, str | None] = {
    "POWERTOOLS_SERVICE_NAME": None,
    "POWERTOOLS_METRICS_NAMESPACE": None,
    "POWERTOOLS_LOG_LEVEL": "LogLevel",
    "STAGE": "Stage",
    "ORDERS_TABLE_NAME": None,
    "FAILED_COMPENSATIONS_TABLE_NAME": None,
    "FAILED_COMPENSATIONS_QUEUE_URL": None,
    "ALERTS_TOPIC_ARN": None,
    "PAYMENT_API_BASE_URL": "PaymentApiBaseUrl",
    "PAYMENT_API_KEY_SECRET_ARN": None,
    "WAREHOUSE_API_BASE_URL": "WarehouseApiBaseUrl",
    "PAYMENT_TIMEOUT_SECONDS": "PaymentTimeoutSeconds",
    "CAPTURE_MAX_RETRIES": "CaptureMaxRetries",
    "CAPTURE_BACKOFF_BASE_SECONDS": "CaptureBackoffBaseSeconds",
    "CAPTURE_BACKOFF_MAX_SECONDS": "CaptureBackoffMaxSeconds",
    "COMPENSATION_MAX_RETRIES": "CompensationMaxRetries",
    "STALE_SAGA_SECONDS": "StaleSagaSeconds",
    "SESSION_TTL_SECONDS": "SessionTtlSeconds",
    "CIRCUIT_FAILURE_THRESHOLD": "CircuitFailureThreshold",
    "RECOVERY_MAX_ATTEMPTS": "RecoveryMaxAttempts",
    "CONFIRM_TIMEOUT_SECONDS": None,
}

RESOURCE_ENVIRONMENT = {
    "ORDERS_TABLE_NAME": {"Ref": "OrdersTable"},
    "FAILED_COMPENSATIONS_TABLE_NAME": {"Ref": "FailedCompensationsTable"},
    "FAILED_COMPENSATIONS_QUEUE_URL": {"Ref": "FailedCompensationsQueue"},
    "ALERTS_TOPIC_ARN": {"Ref": "AlertsTopic"},
    "PAYMENT_API_KEY_SECRET_ARN": {"Ref": "PaymentApiKeySecret"},
}

HTTP_API_INTEGRATION_LIMIT_SECONDS = 30


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that reads short-form intrinsics (!Ref, !GetAtt, ...) as their long form."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{tag_suffix}", node.start_mark)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE_PATH.read_text(), Loader=CloudFormationLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _of_type(resources: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in resources.items() if res["Type"] == resource_type}


def _referenced_names(value: Any) -> Iterator[str]:
    """Logical ids a value points at through Ref, GetAtt or ${...} in Sub."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0]
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                for token in text.split("${")[1:]:
                    yield token.split("}", 1)[0].split(".", 1)[0]
                if not isinstance(inner, str):
                    yield from _referenced_names(inner[1])
            else:
                yield from _referenced_names(inner)
    elif isinstance(value, list):
        for item in value:
            yield from _referenced_names(item)


def _key_schema(schema: list[dict[str, str]]) -> dict[str, str]:
    return {key["KeyType"]: key["AttributeName"] for key in schema}


def _function_timeout(template: dict[str, Any], function: dict[str, Any]) -> int:
    return int(function["Properties"].get("Timeout", template["Globals"]["Function"]["Timeout"]))


# --- logging ---------------------------------------------------------------------------------------


def test_every_function_logs_json_to_its_own_log_group_with_retention(resources: dict[str, Any]) -> None:
    functions = _of_type(resources, "AWS::Serverless::Function")
    assert functions, "the template defines no function"

    for name, function in functions.items():
        logging_config = function["Properties"].get("LoggingConfig")
        assert logging_config, f"{name} has no LoggingConfig"
        assert logging_config["LogFormat"] == "JSON", name

        log_group_id = logging_config["LogGroup"]["Ref"]
        log_group = resources[log_group_id]
        assert log_group["Type"] == "AWS::Logs::LogGroup", name
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_function_log_group_is_named_after_the_function(resources: dict[str, Any]) -> None:
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        function_name = function["Properties"]["FunctionName"]["Fn::Sub"]
        log_group = resources[function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]]

        assert log_group["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{function_name}"}, name


def test_every_function_uses_the_layout_entry_point(resources: dict[str, Any]) -> None:
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        assert function["Properties"]["Handler"] == "app.lambda_handler", name
        assert function["Properties"]["CodeUri"].startswith("functions/"), name


# --- durability -----------------------------------------------------------------------------------


def test_orders_table_has_point_in_time_recovery(resources: dict[str, Any]) -> None:
    table = resources["OrdersTable"]["Properties"]

    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_orders_table_has_sparse_due_index_for_workers(resources: dict[str, Any]) -> None:
    table = resources["OrdersTable"]["Properties"]
    attribute_types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    indexes = {index["IndexName"]: index for index in table["GlobalSecondaryIndexes"]}

    from checkout.orders import DUE_INDEX, PREVIOUS_DUE_INDEX

    due_index = indexes[DUE_INDEX]
    assert _key_schema(due_index["KeySchema"]) == {"HASH": "work_queue", "RANGE": "due_at"}
    assert attribute_types["work_queue"] == "S"
    assert attribute_types["due_at"] == "N"
    # Slim: what a claim's condition needs (the claim returns the whole order), docs/capacity.md
    assert due_index["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["saga_state", "version"]}
    # The previous release's index stays for one release (one index added or removed per table update)
    assert _key_schema(indexes[PREVIOUS_DUE_INDEX]["KeySchema"]) == {"HASH": "work_queue", "RANGE": "due_at"}
    # Sparse: the index keys are not the table's keys, so items without them stay out of the index.
    assert _key_schema(table["KeySchema"]) == {"HASH": "pk"}


def test_due_index_shards_reach_every_function_and_match_the_code_default(template: dict[str, Any]) -> None:
    from checkout.config import Settings

    parameter = template["Parameters"]["DueIndexShards"]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["DUE_INDEX_SHARDS"] == {"Ref": "DueIndexShards"}
    assert parameter["Default"] == Settings.model_fields["due_index_shards"].default
    assert (parameter["MinValue"], parameter["MaxValue"]) == (1, 64)


def test_failed_compensations_table_can_be_listed_by_status_and_by_order(resources: dict[str, Any]) -> None:
    table = resources["FailedCompensationsTable"]["Properties"]
    indexes = {index["IndexName"]: _key_schema(index["KeySchema"]) for index in table["GlobalSecondaryIndexes"]}

    assert _key_schema(table["KeySchema"]) == {"HASH": "id"}
    assert indexes["status-index"] == {"HASH": "status", "RANGE": "created_at"}
    assert indexes["order-index"] == {"HASH": "order_id"}


def test_tables_survive_stack_deletion_and_are_protected_in_prod(resources: dict[str, Any]) -> None:
    tables = _of_type(resources, "AWS::DynamoDB::Table")
    assert set(tables) == {"OrdersTable", "FailedCompensationsTable"}

    for name, table in tables.items():
        assert table["DeletionPolicy"] == "Retain", name
        assert table["UpdateReplacePolicy"] == "Retain", name
        assert table["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert table["Properties"]["SSESpecification"]["SSEEnabled"] is True, name
        assert table["Properties"]["DeletionProtectionEnabled"] == {"Fn::If": ["IsProd", True, False]}, name


# --- retries and the dead-letter queue ------------------------------------------------------------


def test_queue_moves_a_message_to_the_dlq_after_compensation_max_retries(resources: dict[str, Any]) -> None:
    redrive = resources["FailedCompensationsQueue"]["Properties"]["RedrivePolicy"]

    assert redrive["maxReceiveCount"] == {"Ref": "CompensationMaxRetries"}
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["FailedCompensationsDLQ", "Arn"]}


def test_dlq_keeps_messages_longer_than_the_source_queue(resources: dict[str, Any]) -> None:
    source = resources["FailedCompensationsQueue"]["Properties"]
    dlq = resources["FailedCompensationsDLQ"]["Properties"]

    # A moved message keeps its original enqueue time, so the DLQ must outlive the source's retention.
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["MessageRetentionPeriod"] > source["MessageRetentionPeriod"]


def test_queues_are_encrypted_at_rest(resources: dict[str, Any]) -> None:
    for name, queue in _of_type(resources, "AWS::SQS::Queue").items():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name


# --- timing ---------------------------------------------------------------------------------------


def test_api_function_answers_before_the_http_api_gives_up(template: dict[str, Any]) -> None:
    function = template["Resources"]["ConfirmCheckoutFunction"]

    assert _function_timeout(template, function) < HTTP_API_INTEGRATION_LIMIT_SECONDS


def test_a_payment_call_always_fits_in_the_api_function(template: dict[str, Any]) -> None:
    function = template["Resources"]["ConfirmCheckoutFunction"]
    payment_timeout = template["Parameters"]["PaymentTimeoutSeconds"]

    assert payment_timeout["Default"] == 15
    assert payment_timeout["MaxValue"] < _function_timeout(template, function)


def test_recovery_never_takes_over_a_running_confirm(template: dict[str, Any]) -> None:
    function = template["Resources"]["ConfirmCheckoutFunction"]
    stale = template["Parameters"]["StaleSagaSeconds"]

    assert stale["Default"] == 120
    assert stale["MinValue"] > _function_timeout(template, function)


# --- HTTP API -------------------------------------------------------------------------------------


def _routes(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    routes = {}
    for function in _of_type(resources, "AWS::Serverless::Function").values():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                props = event["Properties"]
                routes[f"{props['Method'].upper()} {props['Path']}"] = props
    return routes


def test_create_session_requires_iam_and_customer_routes_do_not(resources: dict[str, Any]) -> None:
    routes = _routes(resources)

    assert routes["POST /checkout/sessions"]["Auth"]["Authorizer"] == "AWS_IAM"
    assert "Auth" not in routes["POST /checkout/confirm"]
    assert "Auth" not in routes["GET /orders/{order_id}"]


def test_http_api_enables_iam_and_logs_every_request(resources: dict[str, Any]) -> None:
    api = resources["CheckoutHttpApi"]["Properties"]

    assert api["Auth"]["EnableIamAuthorizer"] is True
    assert api["FailOnWarnings"] is True
    log_group_id = api["AccessLogSettings"]["DestinationArn"]["Fn::GetAtt"][0]
    assert resources[log_group_id]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}


def test_every_route_reaches_the_api(resources: dict[str, Any]) -> None:
    for route, props in _routes(resources).items():
        assert props["ApiId"] == {"Ref": "CheckoutHttpApi"}, route


# --- configuration --------------------------------------------------------------------------------


def test_globals_set_every_variable_the_code_reads(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    missing = set(CODE_ENVIRONMENT) - set(variables)
    assert not missing, f"Globals lack {sorted(missing)}"
    for variable, parameter in CODE_ENVIRONMENT.items():
        if parameter is not None:
            assert variables[variable] == {"Ref": parameter}, variable
            assert parameter in template["Parameters"], parameter
    for variable, reference in RESOURCE_ENVIRONMENT.items():
        assert variables[variable] == reference, variable


def test_globals_satisfy_every_required_setting_of_the_code(template: dict[str, Any]) -> None:
    config = pytest.importorskip("checkout.config")
    variables = template["Globals"]["Function"]["Environment"]["Variables"]

    required = {field.alias for field in config.Settings.model_fields.values() if field.is_required()}

    assert required <= set(variables), f"cold start would fail: {sorted(required - set(variables))}"


def test_parameter_defaults_match_the_contract(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    defaults = {
        "Stage": "dev",
        "PaymentApiBaseUrl": "https://api.stripe.com",
        "PaymentTimeoutSeconds": 15,
        "CaptureMaxRetries": 5,
        "CaptureBackoffBaseSeconds": 60,
        "CaptureBackoffMaxSeconds": 1800,
        "CompensationMaxRetries": 3,
        "StaleSagaSeconds": 120,
        "SessionTtlSeconds": 1800,
        "CircuitFailureThreshold": 5,
        "AlertEmail": "",
        "LogRetentionDays": 30,
        "LogLevel": "INFO",
    }

    assert {name: parameters[name].get("Default") for name in defaults} == defaults
    assert "Default" not in parameters["WarehouseApiBaseUrl"], "the warehouse URL must be given at deploy"


# --- alerts ---------------------------------------------------------------------------------------


def test_cloudwatch_alarms_can_publish_to_the_encrypted_alerts_topic(resources: dict[str, Any]) -> None:
    topic = resources["AlertsTopic"]["Properties"]
    key_id = topic["KmsMasterKeyId"]["Ref"]
    statements = resources[key_id]["Properties"]["KeyPolicy"]["Statement"]

    cloudwatch = [s for s in statements if s["Principal"].get("Service") == "cloudwatch.amazonaws.com"]
    assert cloudwatch, "the alerts key does not let CloudWatch alarms use it"
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(cloudwatch[0]["Action"])


def test_alert_email_subscription_is_optional(resources: dict[str, Any], template: dict[str, Any]) -> None:
    subscription = resources["AlertsEmailSubscription"]

    assert subscription["Condition"] == "HasAlertEmail"
    assert subscription["Properties"]["Protocol"] == "email"
    assert template["Conditions"]["HasAlertEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]}


# --- outputs --------------------------------------------------------------------------------------


def test_every_resource_has_an_output(template: dict[str, Any]) -> None:
    referenced = {name for output in template["Outputs"].values() for name in _referenced_names(output["Value"])}

    missing = set(template["Resources"]) - referenced
    assert not missing, f"no Output references {sorted(missing)}"


def test_outputs_are_not_exported(template: dict[str, Any]) -> None:
    exported = [name for name, output in template["Outputs"].items() if "Export" in output]

    assert not exported


# --- failed compensations: processor, admin API, alarms, dashboard ----------------------------------

# ARCHITECTURE.md section 5, the admin routes.
ADMIN_ROUTES = {
    "GET /admin/compensations",
    "GET /admin/compensations/{compensation_id}",
    "POST /admin/compensations/{compensation_id}/retry",
    "POST /admin/compensations/{compensation_id}/resolve",
    "GET /admin/orders/{order_id}",
    # The operator console's reads and the DLQ redrive.
    "GET /admin/compensations/{compensation_id}/provider-state",
    "GET /admin/counts",
    "GET /admin/dlq",
    "POST /admin/dlq/redrive",
    "GET /admin/kpis",
}
ROOT = TEMPLATE_PATH.parent


def test_every_admin_route_of_the_contract_exists_and_requires_iam(resources: dict[str, Any]) -> None:
    routes = {route: props for route, props in _routes(resources).items() if " /admin" in route}

    assert set(routes) == ADMIN_ROUTES
    for route, props in routes.items():
        # IAM-less access is denied by API Gateway itself: an unsigned request never reaches the function.
        assert props.get("Auth", {}).get("Authorizer") == "AWS_IAM", route
    admin_events = resources["AdminFunction"]["Properties"]["Events"].values()
    assert {f"{e['Properties']['Method']} {e['Properties']['Path']}" for e in admin_events} == ADMIN_ROUTES


def test_no_route_falls_back_to_an_open_default_authorizer(resources: dict[str, Any]) -> None:
    api_auth = resources["CheckoutHttpApi"]["Properties"]["Auth"]

    # Routes without their own Auth are the customer routes; nothing under /admin may rely on a default.
    assert "DefaultAuthorizer" not in api_auth
    for route, props in _routes(resources).items():
        if "Auth" not in props:
            assert route in {"POST /checkout/confirm", "GET /orders/{order_id}"}, route


def test_dlq_processor_takes_the_queue_in_batches_reporting_item_failures(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    function = resources["DlqProcessorFunction"]["Properties"]
    [event] = function["Events"].values()

    assert function["CodeUri"] == "functions/dlq_processor/"
    assert _function_timeout(template, resources["DlqProcessorFunction"]) == 30
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["FailedCompensationsQueue", "Arn"]}
    assert event["Properties"]["BatchSize"] == 10
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_queue_visibility_timeout_is_six_times_the_processor_timeout(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    visibility = resources["FailedCompensationsQueue"]["Properties"]["VisibilityTimeout"]
    timeout = _function_timeout(template, resources["DlqProcessorFunction"])

    assert visibility >= 6 * timeout


def test_a_retry_lease_ends_before_the_message_is_delivered_again(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    runtime = pytest.importorskip("checkout.runtime")
    timeout = _function_timeout(template, resources["DlqProcessorFunction"])
    visibility = resources["FailedCompensationsQueue"]["Properties"]["VisibilityTimeout"]

    assert runtime.COMPENSATION_RETRY_LEASE_SECONDS <= timeout < visibility


def test_failed_compensation_records_can_never_be_deleted_by_a_function(resources: dict[str, Any]) -> None:
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        for action, resource in _grants(function["Properties"]):
            if "FailedCompensationsTable" in resource:
                assert action not in DELETING_ACTIONS, (name, action)


# --- least privilege -------------------------------------------------------------------------------
# What each function's code calls (grep its modules for boto3 calls), by resource. A change to the code that
# calls something new must change this table and the template together.
_ORDERS = json.dumps({"Fn::GetAtt": ["OrdersTable", "Arn"]}, sort_keys=True)
_DUE_INDEXES = {
    json.dumps({"Fn::Sub": f"${{OrdersTable.Arn}}/index/{index}"}, sort_keys=True)
    for index in ("sharded-due-index", "due-index")  # the second only while the first backfills (orders.py)
}
_LEDGER = json.dumps({"Fn::GetAtt": ["FailedCompensationsTable", "Arn"]}, sort_keys=True)
_STATUS_INDEX = json.dumps({"Fn::Sub": "${FailedCompensationsTable.Arn}/index/status-index"}, sort_keys=True)
_ORDER_INDEX = json.dumps({"Fn::Sub": "${FailedCompensationsTable.Arn}/index/order-index"}, sort_keys=True)
_QUEUE = json.dumps({"Fn::GetAtt": ["FailedCompensationsQueue", "Arn"]}, sort_keys=True)
_DLQ = json.dumps({"Fn::GetAtt": ["FailedCompensationsDLQ", "Arn"]}, sort_keys=True)
_TOPIC = json.dumps({"Ref": "AlertsTopic"}, sort_keys=True)
_TOPIC_KEY = json.dumps({"Fn::GetAtt": ["AlertsTopicKey", "Arn"]}, sort_keys=True)
_SECRET = json.dumps({"Ref": "PaymentApiKeySecret"}, sort_keys=True)
_PAUSE = json.dumps(
    {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${WorkerPauseParameter}"},
    sort_keys=True,
)
_RECORD_FAILURES = {(a, _LEDGER) for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")}
_ALERT = {("sns:Publish", _TOPIC), ("kms:GenerateDataKey*", _TOPIC_KEY), ("kms:Decrypt", _TOPIC_KEY)}
_PAYMENT_KEY = {("secretsmanager:GetSecretValue", _SECRET)}
# Due orders queried and moved; a move whose answer was lost is read back (orders.py _recognised).
_DUE_ORDERS = {("dynamodb:Query", index) for index in _DUE_INDEXES} | {
    ("dynamodb:UpdateItem", _ORDERS),
    ("dynamodb:GetItem", _ORDERS),
}
LEAST_PRIVILEGE: dict[str, set[tuple[str, str]]] = {
    # sessions.open, confirm (TransactWriteItems = Put + Update), saga moves; record_failure on a failed write.
    "ConfirmCheckoutFunction": {(a, _ORDERS) for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")}
    | _RECORD_FAILURES
    | {("sqs:SendMessage", _QUEUE)}
    | _ALERT
    | _PAYMENT_KEY,
    # capture_retry: due orders, claimed and moved; the pause switch.
    "CaptureRetryFunction": _DUE_ORDERS | {("ssm:GetParameter", _PAUSE)} | _PAYMENT_KEY,
    # compensation + recovery: due orders, moved; failed steps recorded, queued, alerted; the pause switch.
    "CompensationFunction": _DUE_ORDERS
    | _RECORD_FAILURES
    | {("sqs:SendMessage", _QUEUE), ("ssm:GetParameter", _PAUSE)}
    | _ALERT
    | _PAYMENT_KEY,
    # compensation_retries: a record read, claimed, updated; its order read and moved; re-queue; exhausted alert.
    "DlqProcessorFunction": {(a, r) for a in ("dynamodb:GetItem", "dynamodb:UpdateItem") for r in (_LEDGER, _ORDERS)}
    | {("sqs:SendMessage", _QUEUE)}
    | _ALERT
    | _PAYMENT_KEY,
    # operator_actions: records listed (two indexes), read, re-queued, resolved; orders read and moved.
    # The console's reads (dead_letters.py, operator_reads.py): queue depths, the DLQ's move task (or its
    # receive-send-delete fallback), KPI metrics, and intents read with the Stripe key.
    "AdminFunction": {(a, r) for a in ("dynamodb:GetItem", "dynamodb:UpdateItem") for r in (_LEDGER, _ORDERS)}
    | {("dynamodb:Query", _STATUS_INDEX), ("dynamodb:Query", _ORDER_INDEX), ("sqs:SendMessage", _QUEUE)}
    | {("sqs:GetQueueAttributes", q) for q in (_QUEUE, _DLQ)}
    | {
        (a, _DLQ)
        for a in ("sqs:StartMessageMoveTask", "sqs:ListMessageMoveTasks", "sqs:ReceiveMessage", "sqs:DeleteMessage")
    }
    | {("cloudwatch:GetMetricData", '"*"')}
    | _PAYMENT_KEY,
}
# Actions AWS authorizes on no resource but "*".
NO_RESOURCE_LEVEL = {"cloudwatch:GetMetricData"}
DELETING_ACTIONS = {"dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:DeleteTable", "dynamodb:PartiQLDelete"}
# SAM policy templates this template uses, as the statements SAM expands them to.
_SAM_POLICY_TEMPLATES = {
    "SNSPublishMessagePolicy": lambda p: (
        {("sns:Publish", json.dumps({"Ref": "AlertsTopic"}, sort_keys=True))}
        if p["TopicName"] == {"Fn::GetAtt": ["AlertsTopic", "TopicName"]}
        else {("sns:Publish", json.dumps(p, sort_keys=True))}
    ),
    "AWSSecretsManagerGetSecretValuePolicy": lambda p: {
        ("secretsmanager:GetSecretValue", json.dumps(p["SecretArn"], sort_keys=True))
    },
}


def _grants(function_properties: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (action, resource) a function's policies allow; fails on a policy it cannot read exactly."""
    granted: set[tuple[str, str]] = set()
    for policy in function_properties.get("Policies", []):
        assert isinstance(policy, dict), policy
        assert len(policy) == 1, policy
        [(kind, body)] = policy.items()
        if kind == "Statement":
            for statement in body:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                granted |= {(a, json.dumps(r, sort_keys=True)) for a in actions for r in targets}
        else:
            assert kind in _SAM_POLICY_TEMPLATES, f"{kind}: use a Statement or a template the test can expand"
            granted |= _SAM_POLICY_TEMPLATES[kind](body)
    return granted


@pytest.mark.parametrize("function", sorted(LEAST_PRIVILEGE))
def test_each_function_may_call_exactly_what_its_code_calls(resources: dict[str, Any], function: str) -> None:
    granted = _grants(resources[function]["Properties"])

    assert granted == LEAST_PRIVILEGE[function]
    assert not any("*" in action.split(":", 1)[1] and not action.startswith("kms:") for action, _ in granted)
    assert all(resource != '"*"' for action, resource in granted if action not in NO_RESOURCE_LEVEL)


def test_no_function_may_delete_or_scan(resources: dict[str, Any]) -> None:
    for name, function in _of_type(resources, "AWS::Serverless::Function").items():
        actions = {action for action, _ in _grants(function["Properties"])}
        assert not actions & (DELETING_ACTIONS | {"dynamodb:Scan", "dynamodb:PartiQLSelect"}), name


def test_every_dynamodb_call_in_the_code_is_granted_to_some_function(resources: dict[str, Any]) -> None:
    code = "\n".join(p.read_text() for p in (TEMPLATE_PATH.parent / "layers" / "shared" / "checkout").glob("*.py"))
    called = set(re.findall(r"\.(get_item|put_item|update_item|query|transact_write_items|delete_item|scan)\(", code))
    # TransactWriteItems is authorized as the Put and Update it holds (orders.py create_order).
    needed = {f"dynamodb:{''.join(w.capitalize() for w in op.split('_'))}" for op in called} - {
        "dynamodb:TransactWriteItems"
    }
    granted = {a for f in LEAST_PRIVILEGE for a, _ in _grants(resources[f]["Properties"])}

    assert "dynamodb:DeleteItem" not in needed
    assert "dynamodb:Scan" not in needed
    assert needed <= granted


# --- customer authentication and throttling --------------------------------------------------------
def test_customer_routes_can_take_an_optional_jwt_authorizer(template: dict[str, Any]) -> None:
    parameters, api = template["Parameters"], template["Resources"]["CheckoutHttpApi"]["Properties"]
    body = api["DefinitionBody"]

    assert parameters["JwtIssuer"]["Default"] == ""
    assert parameters["JwtAudience"]["Type"] == "CommaDelimitedList"
    assert template["Conditions"]["HasJwtAuthorizer"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtIssuer"}, ""]}]}
    condition, scheme, absent = body["components"]["securitySchemes"]["CustomerJwt"]["Fn::If"]
    assert (condition, absent) == ("HasJwtAuthorizer", {"Ref": "AWS::NoValue"})
    assert scheme["x-amazon-apigateway-authorizer"]["type"] == "jwt"
    assert scheme["x-amazon-apigateway-authorizer"]["jwtConfiguration"] == {
        "issuer": {"Ref": "JwtIssuer"},
        "audience": {"Ref": "JwtAudience"},
    }
    customer_routes = {("post", "/checkout/confirm"), ("get", "/orders/{order_id}")}
    secured = {(m, p) for p, ops in body["paths"].items() for m in ops}
    assert secured == customer_routes
    for method, path in customer_routes:
        assert body["paths"][path][method]["security"] == {
            "Fn::If": ["HasJwtAuthorizer", [{"CustomerJwt": []}], {"Ref": "AWS::NoValue"}]
        }


def test_stage_throttling_is_set_by_parameters(template: dict[str, Any]) -> None:
    settings = template["Resources"]["CheckoutHttpApi"]["Properties"]["DefaultRouteSettings"]
    parameters = template["Parameters"]

    assert settings == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
    }
    assert parameters["ApiThrottlingRateLimit"]["Default"] == 100
    assert parameters["ApiThrottlingBurstLimit"]["Default"] >= parameters["ApiThrottlingRateLimit"]["Default"]


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: res["Properties"] for name, res in _of_type(resources, "AWS::CloudWatch::Alarm").items()}


def test_every_alarm_notifies_the_alerts_topic_when_it_fires_and_when_it_clears(resources: dict[str, Any]) -> None:
    alarms = _alarms(resources)
    assert alarms

    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlertsTopic"}], name
        assert alarm["OKActions"] == [{"Ref": "AlertsTopic"}], name
        # Only the backlog alarm treats silence as trouble (in prod): no metric means the workers did not run.
        expected = (
            "notBreaching" if name != "OldestOrderOverdueAlarm" else {"Fn::If": ["IsProd", "breaching", "notBreaching"]}
        )
        assert alarm["TreatMissingData"] == expected, name
        assert "docs/runbook.md#" in alarm["AlarmDescription"], name


def test_worker_errors_and_an_overdue_order_page_whatever_the_cause(resources: dict[str, Any]) -> None:
    by_metric = {alarm["MetricName"]: alarm for alarm in _alarms(resources).values()}

    errors = by_metric["WorkerErrors"]
    assert (errors["Namespace"], errors["Statistic"], errors["Threshold"]) == ("Checkout", "Sum", 0)
    overdue = by_metric["OldestOrderOverdueSeconds"]
    assert (overdue["Namespace"], overdue["Statistic"]) == ("Checkout", "Maximum")
    # Longer than a healthy wait for the slowest schedule (10 min) and a worker's lease (its 180 s Timeout)
    assert overdue["Threshold"] > 600 + 180


def test_every_function_has_an_errors_alarm(resources: dict[str, Any]) -> None:
    watched = {
        alarm["Dimensions"][0]["Value"]["Ref"]
        for alarm in _alarms(resources).values()
        if (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Lambda", "Errors")
    }

    assert watched == set(_of_type(resources, "AWS::Serverless::Function"))


def test_dlq_with_any_message_raises_an_alarm(resources: dict[str, Any]) -> None:
    [alarm] = [a for a in _alarms(resources).values() if a["MetricName"] == "ApproximateNumberOfMessagesVisible"]

    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedCompensationsDLQ", "QueueName"]}}
    ]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


@pytest.mark.parametrize("metric", ["CompensationFailed", "CaptureRetriesExhausted"])
def test_saga_metric_alarms_match_what_powertools_emits(
    resources: dict[str, Any], template: dict[str, Any], metric: str
) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    [alarm] = [a for a in _alarms(resources).values() if a["MetricName"] == metric]

    # Powertools Metrics publishes under POWERTOOLS_METRICS_NAMESPACE with a `service` dimension
    # taken from POWERTOOLS_SERVICE_NAME; an alarm on any other dimension set never sees a datapoint.
    assert alarm["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"], alarm["Statistic"]) == ("GreaterThanThreshold", 0, "Sum")


def _dashboard(resources: dict[str, Any]) -> dict[str, Any]:
    [dashboard] = _of_type(resources, "AWS::CloudWatch::Dashboard").values()
    # The body is JSON once Fn::Sub has filled in ${...}; any value will do to check its shape.
    loaded: dict[str, Any] = json.loads(
        re.sub(r"\$\{[^}]+\}", "placeholder", dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    )
    return loaded


def _dashboard_metrics(resources: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for widget in _dashboard(resources)["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], str) and line[0] != "...":
                found.add((line[0], line[1]))
    return found


def test_dashboard_shows_the_plans_kpis(resources: dict[str, Any]) -> None:
    metrics = _dashboard_metrics(resources)
    expressions = [
        item["expression"]
        for widget in _dashboard(resources)["widgets"]
        for line in widget["properties"].get("metrics", [])
        for item in line
        if isinstance(item, dict) and "expression" in item
    ]

    # saga success rate
    assert {("Checkout", m) for m in ("CheckoutConfirmed", "CapturePending", "AuthorizeOutcomeUnknown")} <= metrics
    # compensation failure rate, average resolution time
    assert {("Checkout", "CompensationFailed"), ("Checkout", "OrdersCompensated")} <= metrics
    assert ("Checkout", "CompensationResolutionSeconds") in metrics
    # alert volume, DLQ depth, backlog of due captures
    assert ("AWS/SNS", "NumberOfMessagesPublished") in metrics
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in metrics
    assert ("Checkout", "CaptureBacklog") in metrics
    assert len(expressions) >= 2


def test_every_checkout_metric_the_template_watches_is_emitted_by_the_code(resources: dict[str, Any]) -> None:
    sources = [*(ROOT / "layers" / "shared" / "checkout").glob("*.py"), *(ROOT / "functions").rglob("*.py")]
    code = "\n".join(path.read_text() for path in sources)
    watched = {name for namespace, name in _dashboard_metrics(resources) if namespace == "Checkout"}
    watched |= {a["MetricName"] for a in _alarms(resources).values() if a["Namespace"] == "Checkout"}

    # A misspelt metric name gives an alarm that never fires and a dashboard line that stays empty.
    assert {name for name in watched if f'"{name}"' not in code} == set()


# --- workers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "rate", "switch"),
    [
        ("CaptureRetryFunction", "rate(5 minutes)", "CaptureRetrySchedule"),
        ("CompensationFunction", "rate(10 minutes)", "CompensationSchedule"),
    ],
)
def test_each_worker_runs_on_its_schedule_and_can_be_switched_off(
    template: dict[str, Any], function: str, rate: str, switch: str
) -> None:
    [event] = template["Resources"][function]["Properties"]["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == rate
    assert event["Properties"]["State"] == {"Ref": switch}
    assert template["Parameters"][switch]["AllowedValues"] == ["ENABLED", "DISABLED"]


def test_workers_read_the_pause_switch_and_may_only_read_it(template: dict[str, Any]) -> None:
    parameter = template["Resources"]["WorkerPauseParameter"]
    assert parameter["Type"] == "AWS::SSM::Parameter"
    assert parameter["Properties"]["Value"] == "none"
    for function in ("CaptureRetryFunction", "CompensationFunction"):
        props = template["Resources"][function]["Properties"]
        assert props["Environment"]["Variables"]["WORKER_PAUSE_PARAMETER"] == {"Ref": "WorkerPauseParameter"}
        pause_arn = {
            "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${WorkerPauseParameter}"
        }
        assert ("ssm:GetParameter", json.dumps(pause_arn, sort_keys=True)) in _grants(props)


def test_a_worker_run_ends_before_its_next_schedule(template: dict[str, Any]) -> None:
    # Leases end with the invocation; recovery of a worker's order waits STALE_SAGA_SECONDS past its last touch.
    for function in ("CaptureRetryFunction", "CompensationFunction"):
        timeout = template["Resources"][function]["Properties"]["Timeout"]
        assert timeout <= 300, "a run should end before the next 5-minute schedule begins piling up"
