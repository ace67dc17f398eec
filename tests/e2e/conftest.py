"""Starts `python -m local.stack` as a user would, on free ports, and stops it afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.demo import LocalApi

ROOT = Path(__file__).resolve().parents[2]
# Short local periods keep the suite quick; the logic is the same at the template's values.
FAST = [
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
]
FREE_PORTS = ["--port", "0", "--moto-port", "0", "--payment-port", "0", "--warehouse-port", "0"]
_FRONT = re.compile(r"HTTP API \(front\)\s+(http://127\.0\.0\.1:\d+)")


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_stack(log_path: Path, *args: str, wait_ready: bool = True) -> RunningStack:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    stack = RunningStack(process, log_path)
    if not wait_ready:
        return stack
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = stack.log()
        match = _FRONT.search(text)
        if match and "ready:" in text:
            stack.url = match[1]
            return stack
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stack.interrupt()
    raise AssertionError(f"the local stack did not start:\n{stack.log()}")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = start_stack(tmp_path_factory.mktemp("stack") / "stack.log", *FREE_PORTS, *FAST)
    try:
        yield stack
    finally:
        stack.interrupt()


@pytest.fixture(scope="session")
def local_api(local_stack: RunningStack) -> Iterator[LocalApi]:
    api = LocalApi(local_stack.url)
    try:
        yield api
    finally:
        api.close()
