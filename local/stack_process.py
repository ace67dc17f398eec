"""`python -m local.stack` as a child process, as a user starts it: its log in a file, ready when it says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FREE_PORTS = ("--port", "0", "--moto-port", "0", "--payment-port", "0", "--warehouse-port", "0", "--dynamodb-port", "0")
_FRONT = re.compile(r"HTTP API \(front\)\s+(http://127\.0\.0\.1:\d+)")


@dataclass
class StackProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @classmethod
    def start(cls, log_path: Path, *args: str, wait_ready: bool = True, timeout: float = 90) -> StackProcess:
        """Starts the stack with `args`; waits for its banner unless told not to (it may be meant to fail)."""
        # The stack sets its own AWS and Powertools environment; nothing of the caller's may leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
        env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "local.stack", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        stack = cls(process, log_path)
        if wait_ready:
            stack._wait_ready(timeout)
        return stack

    @classmethod
    @contextmanager
    def running(cls, log_path: Path, *args: str) -> Iterator[StackProcess]:
        """The stack started with `args` for the block, then stopped with Ctrl-C (a test session's fixture)."""
        stack = cls.start(log_path, *args)
        try:
            yield stack
        finally:
            stack.interrupt()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            match = _FRONT.search(text)
            if match and "ready:" in text:
                self.url = match[1]
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.interrupt()
        raise RuntimeError(f"the local stack did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user stops it; killed if it does not stop in time. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
