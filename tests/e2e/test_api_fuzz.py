"""schemathesis (v4) against both committed OpenAPI documents, on a local stack started as a user starts it.

Every phase (examples, coverage, fuzzing, stateful over the documents' links) with a fixed seed and a time budget
per document; it must find no server error, no answer the document does not describe and no request the document
allows that the API refuses (tests/e2e/schemathesis.toml lists the checks left out, each with its reason).
`make fuzz` runs the same for longer (SCHEMATHESIS_MAX_TIME).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.demo import LocalApi, run_scenario
from local.dynamodb_local import DynamoDBLocal
from local.stack_process import FREE_PORTS, StackProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = Path(__file__).with_name("schemathesis.toml")
# Seconds per document: `make test` stays within ~90 s on a 2-core machine; `make fuzz` raises it.
MAX_TIME = os.environ.get("SCHEMATHESIS_MAX_TIME", "25")
# A SigV4 header for the documents' security scheme; the local front checks no signature (see the config).
LOCAL_SIGV4 = "Authorization: AWS4-HMAC-SHA256 Credential=local/20261201/us-east-1/execute-api/aws4_request"


# Short local periods so the seeding scenario converges quickly; the logic is the same at the template's values.
FAST = (
    "--visibility-timeout-override",
    "1",
    "--parameter",
    "CaptureMaxRetries=2",
    "--parameter",
    "CompensationMaxRetries=2",
)


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: DynamoDBLocal) -> Iterator[StackProcess]:
    """A stack of its own (what the fuzzer writes never meets the other end-to-end tests' assertions), holding a
    failed compensation an operator retried, so the admin routes and their links have a real record and order."""
    # Tables of its own (stack name "fuzz") on the session's DynamoDB Local, as the other end-to-end stack does.
    shared = ("--dynamodb-endpoint", dynamodb_local.url, "--stack-name", "fuzz")
    stack = StackProcess.start(tmp_path_factory.mktemp("fuzz") / "stack.log", *FREE_PORTS, *shared, *FAST)
    try:
        api = LocalApi(stack.url)
        try:
            seeded = run_scenario(api, "void_fails_into_dlq", delay_seconds=1)
        finally:
            api.close()
        assert seeded.passed, seeded.error or seeded.seen
        yield stack
    finally:
        stack.interrupt()


@pytest.mark.parametrize("document", ["docs/openapi.json", "docs/admin-openapi.json"])
def test_api_answers_only_as_its_document_says(fuzzed_stack: StackProcess, document: str, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        document,
        "--url",
        fuzzed_stack.url,
        "--max-time",
        MAX_TIME,
        "--header",
        LOCAL_SIGV4,
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=int(MAX_TIME) + 120)

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n--- stack log ---\n{fuzzed_stack.log()[-5000:]}"
