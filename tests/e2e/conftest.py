"""Starts `python -m local.stack` as a user would, on free ports, and stops it afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest

from local.demo import LocalApi
from local.dynamodb_local import DynamoDBLocal
from local.stack_process import FREE_PORTS, StackProcess

# Short local periods keep the suite quick; the logic is the same at the template's values.
FAST = (
    "--schedule-period",
    "3",
    "--visibility-timeout-override",
    "1",
    "--parameter",
    "PaymentTimeoutSeconds=2",
    "--parameter",
    "CaptureMaxRetries=2",
    "--parameter",
    "CompensationMaxRetries=2",
)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: DynamoDBLocal) -> Iterator[StackProcess]:
    # The session's DynamoDB Local (one JVM per session); the stack makes its own tables there and drops them.
    shared = ("--dynamodb-endpoint", dynamodb_local.url, "--stack-name", "e2e")
    with StackProcess.running(tmp_path_factory.mktemp("stack") / "stack.log", *FREE_PORTS, *shared, *FAST) as stack:
        yield stack


@pytest.fixture(scope="session")
def local_api(local_stack: StackProcess) -> Iterator[LocalApi]:
    with closing(LocalApi(local_stack.url)) as api:
        yield api
