"""DynamoDB Local as the stack and the tests start it: it answers, it holds the template's tables, and it says
what to install when it cannot run (no silent fallback to another emulator)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from local.dynamodb_local import DynamoDBLocal, DynamoDBLocalError, find_jar
from local.template_stack import TemplateStack


def test_without_java_starting_fails_naming_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(DynamoDBLocalError, match="apt-get install openjdk-17-jre-headless"):
        DynamoDBLocal().start()


def test_without_the_jar_starting_fails_naming_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(DynamoDBLocalError, match="make dynamodb-local"):
        find_jar(tmp_path)


def test_it_holds_every_table_of_the_template_with_its_indexes(dynamodb_local: DynamoDBLocal) -> None:
    stack = TemplateStack(stack_name="launcher-test", dynamodb_endpoint_url=dynamodb_local.url).deploy_tables()
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.url, region_name="us-east-1")
    try:
        for name, resource in stack.of_type("AWS::DynamoDB::Table").items():
            table = client.describe_table(TableName=f"launcher-test-{name}")["Table"]
            expected = {i["IndexName"] for i in resource["Properties"].get("GlobalSecondaryIndexes", [])}
            assert {i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])} == expected
            assert table["KeySchema"] == resource["Properties"]["KeySchema"]
    finally:
        stack.delete_tables()
    assert not [t for t in client.list_tables()["TableNames"] if t.startswith("launcher-test-")]


def test_a_stopped_instance_no_longer_answers_and_frees_its_port() -> None:
    ddb = DynamoDBLocal().start()
    assert ddb.answers()

    ddb.stop()

    assert not ddb.answers()
    ddb.stop()  # twice is harmless
