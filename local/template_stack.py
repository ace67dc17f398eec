"""Creates template.yaml's tables, queues, topics, secrets and SSM parameters on an AWS endpoint (moto), and
resolves the environment the template gives each function, so nothing the template defines is defined twice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !GetAtt, !Sub, ...) into their long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as handle:
        loaded: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)
    return loaded


class TemplateStack:
    """The template's stateful resources, created on whatever endpoint boto3 is pointed at."""

    def __init__(
        self,
        template: dict[str, Any] | None = None,
        *,
        stack_name: str = "checkout-local",
        parameters: Mapping[str, str] | None = None,
        region: str = "us-east-1",
        account: str = "123456789012",
        endpoint_url: str | None = None,
        dynamodb_endpoint_url: str | None = None,
    ) -> None:
        self.template = template or load_template()
        self.stack_name = stack_name
        self.region = region
        self.account = account
        self._endpoint = endpoint_url
        # DynamoDB may live elsewhere (DynamoDB Local) while moto serves the other services.
        self._dynamodb_endpoint = dynamodb_endpoint_url or endpoint_url
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in self.template.get("Parameters", {}).items()
        }
        self.parameters.update(parameters or {})
        self.physical: dict[str, dict[str, str]] = {}

    @property
    def resources(self) -> dict[str, Any]:
        resources: dict[str, Any] = self.template["Resources"]
        return resources

    def _client(self, service: Any) -> Any:
        endpoint = self._dynamodb_endpoint if service == "dynamodb" else self._endpoint
        return boto3.client(service, region_name=self.region, endpoint_url=endpoint)

    def of_type(self, kind: str) -> dict[str, Any]:
        return {name: res for name, res in self.resources.items() if res["Type"] == kind}

    def deploy(self) -> TemplateStack:
        return self.deploy_services().deploy_tables()

    def deploy_services(self) -> TemplateStack:
        """Everything but the tables: secrets, parameters, topics, queues."""
        for name, res in self.of_type("AWS::SecretsManager::Secret").items():
            self._secret(name, res.get("Properties", {}))
        for name, res in self.of_type("AWS::SSM::Parameter").items():
            self._parameter(name, res.get("Properties", {}))
        for name in self.of_type("AWS::SNS::Topic"):
            arn = self._client("sns").create_topic(Name=f"{self.stack_name}-{name}")["TopicArn"]
            self.physical[name] = {"Ref": arn, "TopicArn": arn, "TopicName": arn.rsplit(":", 1)[1]}
        queues = self.of_type("AWS::SQS::Queue")
        # Dead-letter queues first: a redrive policy names its target's ARN.
        for name in sorted(queues, key=lambda n: "RedrivePolicy" in queues[n].get("Properties", {})):
            self._queue(name, queues[name].get("Properties", {}))
        return self

    def deploy_tables(self) -> TemplateStack:
        """Only the template's DynamoDB tables (with their indexes, streams and TTL)."""
        for name, res in self.of_type("AWS::DynamoDB::Table").items():
            self._table(name, res["Properties"])
        return self

    def clear_tables(self) -> None:
        """Empties the stack's tables for the next test: a few items are deleted (tens of ms), a big table is
        dropped and made again (a test that seeded 21,000 orders would otherwise cost seconds to clear)."""
        client = self._client("dynamodb")
        for name in self.of_type("AWS::DynamoDB::Table"):
            if name not in self.physical:
                continue
            table = self.physical[name]["Ref"]
            key = [k["AttributeName"] for k in self.resources[name]["Properties"]["KeySchema"]]
            names = {f"#k{i}": k for i, k in enumerate(key)}
            page = client.scan(
                TableName=table, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names, Limit=500
            )
            if "LastEvaluatedKey" in page:
                client.delete_table(TableName=table)
                client.get_waiter("table_not_exists").wait(TableName=table, WaiterConfig={"Delay": 0.1})
                self._table(name, self.resources[name]["Properties"])
                continue
            items = page["Items"]
            for start in range(0, len(items), 25):
                requests = [{"DeleteRequest": {"Key": item}} for item in items[start : start + 25]]
                while requests:
                    unprocessed = client.batch_write_item(RequestItems={table: requests})["UnprocessedItems"]
                    requests = unprocessed.get(table, [])

    def delete_tables(self) -> None:
        """Drops the tables deploy_tables() created (a test's own, on a shared DynamoDB Local)."""
        client = self._client("dynamodb")
        for name in self.of_type("AWS::DynamoDB::Table"):
            if name in self.physical:
                client.delete_table(TableName=self.physical.pop(name)["Ref"])

    def _secret(self, name: str, props: dict[str, Any]) -> None:
        arn = self._client("secretsmanager").create_secret(
            Name=f"{self.stack_name}-{name}", SecretString=str(props.get("SecretString", "sk_test_local"))
        )["ARN"]
        self.physical[name] = {"Ref": arn, "Id": arn}

    def _parameter(self, name: str, props: dict[str, Any]) -> None:
        parameter_name = str(self.resolve(props["Name"])) if "Name" in props else f"{self.stack_name}-{name}"
        kind = str(self.resolve(props.get("Type", "String")))
        value = str(self.resolve(props["Value"]))
        self._client("ssm").put_parameter(Name=parameter_name, Type=kind, Value=value, Overwrite=True)
        self.physical[name] = {"Ref": parameter_name, "Type": kind, "Value": value}

    def _queue(self, name: str, props: dict[str, Any]) -> None:
        attributes: dict[str, str] = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
            if key in props:
                attributes[key] = str(self.resolve(props[key]))
        for key in ("RedrivePolicy", "RedriveAllowPolicy"):
            if key in props:
                policy = {k: self.resolve(v) for k, v in props[key].items()}
                if "maxReceiveCount" in policy:
                    policy["maxReceiveCount"] = int(policy["maxReceiveCount"])
                if key == "RedriveAllowPolicy" and "sourceQueueArns" in policy:
                    continue  # would name a queue not created yet; moto does not enforce it anyway
                attributes[key] = json.dumps(policy)
        queue_name = f"{self.stack_name}-{name}"
        url = self._client("sqs").create_queue(QueueName=queue_name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{self.region}:{self.account}:{queue_name}"
        self.physical[name] = {"Ref": url, "QueueUrl": url, "Arn": arn, "QueueName": queue_name}

    def _table(self, name: str, props: dict[str, Any]) -> None:
        table_name = f"{self.stack_name}-{name}"
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": "PAY_PER_REQUEST",
        }
        indexes = [
            {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
            for i in props.get("GlobalSecondaryIndexes", [])
        ]
        if indexes:
            kwargs["GlobalSecondaryIndexes"] = indexes
        if "StreamSpecification" in props:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        client = self._client("dynamodb")
        description = client.create_table(**kwargs)["TableDescription"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl and str(self.resolve(ttl.get("Enabled", False))).lower() == "true":
            client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": str(self.resolve(ttl["AttributeName"]))},
            )
        self.physical[name] = {"Ref": table_name, "Arn": description["TableArn"]}
        if "LatestStreamArn" in description:
            self.physical[name]["StreamArn"] = description["LatestStreamArn"]

    def resolve(self, value: Any) -> Any:
        """Resolves !Ref, !GetAtt, !Sub, !If/!Equals (on parameters) against this stack."""
        if isinstance(value, dict) and len(value) == 1:
            (fn, arg), *_ = value.items()
            if fn == "Ref":
                return self._ref(str(arg))
            if fn == "Fn::GetAtt":
                return self.physical[arg[0]][arg[1]]
            if fn == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                for key in ("AWS::StackName", "AWS::Region", "AWS::AccountId", *self.parameters, *self.physical):
                    if "${" + key + "}" in text:
                        text = text.replace("${" + key + "}", str(self._ref(key)))
                return text
            if fn == "Fn::If":
                return self.resolve(arg[1] if self._condition(arg[0]) else arg[2])
        return value

    def _ref(self, name: str) -> str:
        pseudo = {"AWS::StackName": self.stack_name, "AWS::Region": self.region, "AWS::AccountId": self.account}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]["Ref"]
        return f"{self.stack_name}-{name}"  # a resource the local stack does not create (a function, a role)

    def _condition(self, name: str) -> bool:
        spec = self.template.get("Conditions", {}).get(name)
        return bool(spec) and self._evaluate(spec)

    def _evaluate(self, spec: Any) -> bool:
        (fn, arg), *_ = spec.items()
        if fn == "Fn::Equals":
            return bool(str(self.resolve(arg[0])) == str(self.resolve(arg[1])))
        if fn == "Fn::Not":
            return not self._evaluate(arg[0])
        if fn == "Fn::And":
            return all(self._evaluate(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._evaluate(a) for a in arg)
        if fn == "Condition":
            return self._condition(arg)
        raise ValueError(f"unsupported condition {fn}")

    def environment(self, function: str | None = None) -> dict[str, str]:
        """The environment the template gives `function` (Globals merged with its own), resolved."""
        variables: dict[str, Any] = dict(
            self.template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        )
        if function is not None:
            props = self.resources[function].get("Properties", {})
            variables.update(props.get("Environment", {}).get("Variables", {}))
        return {key: str(self.resolve(value)) for key, value in variables.items()}
