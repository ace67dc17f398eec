"""`make run` on DynamoDB Local, as a user meets it: the tables are there and nowhere else, and without Java the
stack stops and says what to install instead of quietly falling back to another emulator."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import httpx

from local.stack_process import FREE_PORTS, ROOT, StackProcess


def test_the_tables_live_on_dynamodb_local_and_the_other_services_on_moto(local_stack: StackProcess) -> None:
    described = httpx.get(f"{local_stack.url}/_local/stack").json()
    tables = [ids["Ref"] for ids in described["resources"].values() if ":table/" in ids.get("Arn", "")]
    credentials = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}

    on_dynamodb_local = boto3.client("dynamodb", endpoint_url=described["dynamodb"], **credentials).list_tables()
    on_moto = boto3.client("dynamodb", endpoint_url=described["moto"], **credentials).list_tables()

    assert tables
    assert set(tables) <= set(on_dynamodb_local["TableNames"])
    assert on_moto["TableNames"] == []
    assert "DynamoDB Local" in local_stack.log().split("ready:")[0]


def test_without_java_the_stack_stops_and_names_the_package_to_install() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JAVA_HOME"))}
    env["PATH"] = "/nonexistent"

    done = subprocess.run(
        [sys.executable, "-m", "local.stack", *FREE_PORTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "apt-get install openjdk-17-jre-headless" in done.stderr
    assert "ready:" not in done.stdout
