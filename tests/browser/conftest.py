"""The operator console in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Against `python -m local.stack` on free ports and `checkout-admin console --local` started as an operator starts
them. Failed compensations are made the way they happen: the fake Stripe's POST /_faults makes every capture and
every void answer 503, the workers run, and the dlq_processor retries until each record is `failed` and its message
sits in the DLQ.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from local.demo import LocalApi
from local.dynamodb_local import DynamoDBLocal
from local.stack_process import FREE_PORTS, ROOT, StackProcess
from tests.e2e.conftest import FAST

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = (
    "the browser tests need Debian's chromium and chromium-driver: `make browsers` installs them "
    "(as root: apt-get update && apt-get install -y chromium chromium-driver)"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1366,900",
)
_CONSOLE_URL = re.compile(r"checkout console: (http://127\.0\.0\.1:(\d+)/\?token=\S+)")


def wait_for(condition: Callable[[], Any], what: str, *, timeout: float = 60, every: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


@dataclass
class Console:
    process: subprocess.Popen[str]
    start_url: str
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class FailedRecords:
    """Three orders whose capture and void kept failing: each record `failed`, each message in the DLQ."""

    to_retry: dict[str, Any]
    to_resolve: dict[str, Any]
    voided_by_hand: dict[str, Any]


@pytest.fixture(scope="session")
def console_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: DynamoDBLocal) -> Iterator[StackProcess]:
    # The session's DynamoDB Local, with tables of its own (stack name), as the e2e stack does.
    shared = ("--dynamodb-endpoint", dynamodb_local.url, "--stack-name", "console")
    log = tmp_path_factory.mktemp("console-stack") / "stack.log"
    with StackProcess.running(log, *FREE_PORTS, *shared, *FAST) as stack:
        yield stack


@pytest.fixture(scope="session")
def stack_api(console_stack: StackProcess) -> Iterator[LocalApi]:
    with closing(LocalApi(console_stack.url)) as api:
        yield api


@pytest.fixture(scope="session")
def console(console_stack: StackProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`checkout-admin console --local URL --port 0`, as an operator runs it; the URL read from what it prints."""
    tool = Path(sys.executable).parent / "checkout-admin"
    log = tmp_path_factory.mktemp("console") / "console.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(tool), "console", "--local", console_stack.url, "--port", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    try:
        match = wait_for(lambda: _CONSOLE_URL.search(log.read_text()), "the console prints its URL", timeout=30)
        yield Console(process, match[1], int(match[2]))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def browser(console: Console) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(INSTALL_HINT)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # The Debian driver, never one Selenium Manager would download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.implicitly_wait(0)
    try:
        driver.get(console.start_url)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where page screenshots go: CONSOLE_SCREENSHOTS (`make screenshots` sets docs/), else a temporary folder."""
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def _order_state(api: LocalApi, order_id: str) -> str:
    return str(api.call("GET", f"/admin/orders/{order_id}").body["saga_state"])


@pytest.fixture(scope="session")
def failed_records(stack_api: LocalApi) -> FailedRecords:
    api = stack_api
    backoff = float(api.info.parameters.get("CaptureBackoffMaxSeconds", 30)) + 1
    api.fault("payment", operation="capture", status=503)
    api.fault("payment", operation="cancel", status=503)
    orders: list[str] = []
    for _ in range(3):
        customer = f"cus_console_{uuid.uuid4().hex[:8]}"
        body = {
            "customer_id": customer,
            "currency": "usd",
            "items": [{"sku": "sku_console_mug", "quantity": 1, "unit_amount": 1800}],
            "payment_method": "pm_card_visa",
        }
        session = api.call("POST", "/checkout/sessions", json=body)
        assert session.status == 201, session.body
        headers = {"X-Session-ID": session.body["session_id"], "X-Customer-ID": customer}
        confirmed = api.call("POST", "/checkout/confirm", headers=headers)
        assert confirmed.status == 202, confirmed.body
        orders.append(confirmed.body["order_id"])

    def all_in(states: set[str]) -> bool:
        return all(_order_state(api, order) in states for order in orders)

    # Age the captures past their backoff and run the capture worker until it gives up, then compensation.
    for _ in range(10):
        if all_in({"CAPTURE_FAILED", "COMPENSATING", "COMPENSATION_FAILED"}):
            break
        api.advance_clock(backoff)
        api.run("capture_retry")
    # The dlq_processor may take a record's new message and send its alert before the compensation run does; the
    # order then stays COMPENSATING until its next recovery run, one STALE_SAGA_SECONDS on (docs/decisions.md).
    stale = float(api.info.parameters.get("StaleSagaSeconds", 120)) + 1
    for attempt in range(5):
        if all_in({"COMPENSATION_FAILED"}):
            break
        if attempt:
            # Minutes pass only once the records' alerts are marked sent (see local/demo.py's failed compensation).
            wait_for(lambda: all(r["alert_sent"] for o in orders for r in api.records_of(o)), "alerts sent", timeout=10)
            api.advance_clock(stale)
        api.run("compensation")
    assert all_in({"COMPENSATION_FAILED"}), [_order_state(api, o) for o in orders]

    def exhausted() -> list[dict[str, Any]] | None:
        records = [api.records_of(order) for order in orders]
        if all(found and found[0]["status"] == "failed" for found in records):
            return [found[0] for found in records]
        return None

    records = wait_for(exhausted, "the dlq_processor's retries run out (records failed)", timeout=90)
    wait_for(lambda: api.queue_depth("FailedCompensationsDLQ") >= 3, "the three messages reach the DLQ", timeout=60)
    return FailedRecords(to_retry=records[0], to_resolve=records[1], voided_by_hand=records[2])
