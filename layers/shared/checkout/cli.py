"""checkout-admin: the operator's command line for failed compensations and the DLQ, against AWS or the local stack.

Resource names come from the CloudFormation stack's outputs (`--stack-name`), unless given as options or in the
environment (the variables the functions themselves read), which is how it points at the local stack:

    checkout-admin list --status failed | jq '.items[].id'
    checkout-admin --endpoint-url http://127.0.0.1:5000 --orders-table ... --operator me resolve fc_... --note "..."
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from checkout.alerts import Alert
from checkout.compensation_retries import seconds_between
from checkout.dead_letters import redrive_dlq
from checkout.errors import CheckoutError
from checkout.failed_compensations import FailedCompensationLedger, RecordStatus
from checkout.operator_actions import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, OperatorActions
from checkout.orders import OrderStore
from checkout.saga import Saga

DEFAULT_STACK_NAME = "checkout-saga"
AWS_CONFIG = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard", "max_attempts": 3})

# option -> (environment variable, stack output)
RESOURCES = {
    "orders_table": ("ORDERS_TABLE_NAME", "OrdersTableName"),
    "compensations_table": ("FAILED_COMPENSATIONS_TABLE_NAME", "FailedCompensationsTableName"),
    "queue_url": ("FAILED_COMPENSATIONS_QUEUE_URL", "FailedCompensationsQueueUrl"),
    "dlq_url": ("FAILED_COMPENSATIONS_DLQ_URL", "FailedCompensationsDLQUrl"),
    "api_url": ("CHECKOUT_ADMIN_API_URL", "AdminApiBaseUrl"),
}
DEFAULT_LOCAL_URL = "http://127.0.0.1:3000"


class CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _NoAlerts:
    """Operator actions never alert (alerts belong to the failure, not to its handling)."""

    def send(self, alert: Alert) -> None:  # pragma: no cover - never called by OperatorActions
        raise RuntimeError("checkout-admin sends no alerts")


@dataclass
class Aws:
    """The clients of one run, all on the same session, region and endpoint."""

    session: Any
    endpoint_url: str | None

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint_url, config=AWS_CONFIG)


class Resources:
    """Resource names: option, else environment, else the stack's outputs (read once, only when needed)."""

    def __init__(self, args: argparse.Namespace, aws: Aws, environ: dict[str, str]) -> None:
        self._args = args
        self._aws = aws
        self._environ = environ
        self._outputs: dict[str, str] | None = None

    def get(self, name: str) -> str:
        variable, output = RESOURCES[name]
        value = getattr(self._args, name, None) or self._environ.get(variable)
        if value:
            return str(value)
        outputs = self._stack_outputs()
        if output not in outputs:
            raise CliError("missing_resource", f"stack {self._args.stack_name} has no output {output}")
        return outputs[output]

    def _stack_outputs(self) -> dict[str, str]:
        if self._outputs is None:
            try:
                stacks = self._aws.client("cloudformation").describe_stacks(StackName=self._args.stack_name)["Stacks"]
            except ClientError as exc:
                raise CliError(
                    "stack_not_found",
                    f"cannot read the outputs of stack {self._args.stack_name} ({exc}); "
                    "give --stack-name, or the resource names (--orders-table, --compensations-table, ...)",
                ) from exc
            self._outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        return self._outputs


def operator_actions(resources: Resources, aws: Aws) -> OperatorActions:
    dynamodb = aws.client("dynamodb")
    store = OrderStore(resources.get("orders_table"), dynamodb)
    # Saga timing only matters for states with work due; operators only ever move orders to COMPENSATED.
    saga = Saga(store, stale_saga_seconds=120, clock=time.time)
    ledger = FailedCompensationLedger(
        table_name=resources.get("compensations_table"),
        queue_url=resources.get("queue_url"),
        dynamodb=dynamodb,
        sqs=aws.client("sqs"),
        alerts=_NoAlerts(),
        max_retries=0,
        clock=time.time,
    )
    return OperatorActions(ledger=ledger, store=store, saga=saga, clock=time.time)


def operator_identity(args: argparse.Namespace, aws: Aws, environ: dict[str, str]) -> str:
    """Who acts: --operator (or CHECKOUT_OPERATOR) locally, else the caller's IAM ARN, as the admin API records it."""
    named = args.operator or environ.get("CHECKOUT_OPERATOR")
    if named:
        return str(named)
    try:
        return str(aws.client("sts").get_caller_identity()["Arn"])
    except (ClientError, BotoCoreError) as exc:
        raise CliError("no_identity", f"cannot tell who you are ({exc}); pass --operator NAME") from exc


# commands ---------------------------------------------------------------------------------------
Command = Callable[[argparse.Namespace, Resources, Aws, dict[str, str]], Any]


def _list(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    status = RecordStatus(args.status) if args.status else None
    return operator_actions(resources, aws).list_records(status=status, limit=args.limit, cursor=args.cursor).body()


def _show(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    return operator_actions(resources, aws).show(args.id).public_view()


def _retry(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    by = operator_identity(args, aws, environ)
    return operator_actions(resources, aws).retry(args.id, by=by, note=args.note).public_view()


def _resolve(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    by = operator_identity(args, aws, environ)
    record = operator_actions(resources, aws).resolve(args.id, by=by, note=args.note)
    assert record.resolved_at is not None
    publish_resolution(aws, environ, seconds_between(record.created_at, record.resolved_at))
    return record.public_view()


def publish_resolution(aws: Aws, environ: dict[str, str], seconds: float) -> None:
    """The metrics the admin API's resolve emits, so the dashboard's resolution time counts this one too.

    Best effort: the record is already resolved; without cloudwatch:PutMetricData only the KPI misses it.
    """
    dimensions = [{"Name": "service", "Value": environ.get("POWERTOOLS_SERVICE_NAME", "checkout")}]
    try:
        aws.client("cloudwatch").put_metric_data(
            Namespace=environ.get("POWERTOOLS_METRICS_NAMESPACE", "Checkout"),
            MetricData=[
                {"MetricName": "CompensationResolvedByHand", "Dimensions": dimensions, "Value": 1, "Unit": "Count"},
                {
                    "MetricName": "CompensationResolutionSeconds",
                    "Dimensions": dimensions,
                    "Value": seconds,
                    "Unit": "Seconds",
                },
            ],
        )
    except (ClientError, BotoCoreError) as exc:
        print(json.dumps({"warning": "metric_not_published", "message": str(exc)}), file=sys.stderr)


def _order(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    return operator_actions(resources, aws).order(args.id)


def _redrive(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    return redrive_dlq(
        aws.client("sqs"),
        dlq_url=resources.get("dlq_url"),
        queue_url=resources.get("queue_url"),
        max_per_second=args.max_per_second,
    )


def _console(args: argparse.Namespace, resources: Resources, aws: Aws, environ: dict[str, str]) -> Any:
    # Imported here: the other commands never pay for the console's server.
    from checkout.console.server import AdminApi, ConsoleError, ConsoleServer, LocalAdminApi, SignedAdminApi, region_of
    from checkout.console.server import serve as serve_console

    api: AdminApi
    if args.local is not None:
        api = LocalAdminApi(args.local)
    else:
        url = resources.get("api_url")
        try:
            region = region_of(url, aws.session.region_name)
        except ConsoleError as exc:
            raise CliError(exc.code, exc.message) from exc
        try:
            # The identity the admin API will record on every action: the signer's, whatever --operator says.
            identity = str(aws.client("sts").get_caller_identity()["Arn"])
        except (ClientError, BotoCoreError) as exc:
            raise CliError("no_identity", f"no usable AWS credentials to sign with ({exc})") from exc
        api = SignedAdminApi(url, aws.session, region=region, identity=identity)
    try:
        server = ConsoleServer(args.port, api, mode="local" if args.local is not None else "aws")
    except OSError as exc:
        raise CliError("port_in_use", f"cannot listen on 127.0.0.1:{args.port} ({exc}); pass --port 0") from exc
    if args.open:
        webbrowser.open(server.start_url)
    serve_console(server, out=lambda line: print(line, flush=True))
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(json.dumps({"error": "usage", "message": message}), file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="checkout-admin",
        description="List, show, retry and resolve failed compensations, read orders, redrive the DLQ. "
        "Prints JSON (pipe it into jq).",
    )
    root.add_argument(
        "--stack-name",
        default=os.environ.get("CHECKOUT_STACK_NAME", DEFAULT_STACK_NAME),
        help=f"CloudFormation stack whose outputs name the resources (default {DEFAULT_STACK_NAME})",
    )
    root.add_argument("--region", help="AWS Region (default: your AWS configuration)")
    root.add_argument("--profile", help="AWS named profile (default: your AWS configuration)")
    root.add_argument("--endpoint-url", help="AWS endpoint, e.g. the local stack's http://127.0.0.1:PORT")
    root.add_argument("--orders-table", help="orders table name (env ORDERS_TABLE_NAME)")
    root.add_argument("--compensations-table", help="failed-compensations table (env FAILED_COMPENSATIONS_TABLE_NAME)")
    root.add_argument("--queue-url", help="failed-compensations queue URL (env FAILED_COMPENSATIONS_QUEUE_URL)")
    root.add_argument("--dlq-url", help="failed-compensations DLQ URL (env FAILED_COMPENSATIONS_DLQ_URL)")
    root.add_argument("--operator", help="who you are, recorded on the record (default: your IAM ARN from STS)")
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)

    listing = commands.add_parser("list", help="failed compensations, failed first (or of one --status)")
    listing.add_argument("--status", choices=[s.value for s in RecordStatus])
    listing.add_argument("--limit", type=int, default=DEFAULT_PAGE_SIZE, help=f"1..{MAX_PAGE_SIZE}")
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", help="one failed-compensation record")
    show.add_argument("id")
    show.set_defaults(run=_show)

    retry = commands.add_parser("retry", help="queue a record again for the dlq_processor")
    retry.add_argument("id")
    retry.add_argument("--note", help="why (kept on the record)")
    retry.set_defaults(run=_retry)

    resolve = commands.add_parser("resolve", help="close a record fixed by hand; its order becomes COMPENSATED")
    resolve.add_argument("id")
    resolve.add_argument("--note", required=True, help="what was done (required, kept on the record)")
    resolve.set_defaults(run=_resolve)

    order = commands.add_parser("order", help="an order with its history and failed-compensation records")
    order.add_argument("id")
    order.set_defaults(run=_order)

    redrive = commands.add_parser("redrive-dlq", help="move every DLQ message back to the failed-compensations queue")
    redrive.add_argument("--max-per-second", type=int, help="redrive velocity (start_message_move_task only)")
    redrive.set_defaults(run=_redrive)

    console = commands.add_parser(
        "console",
        help="a web console on 127.0.0.1 that calls the admin API signed with your AWS credentials",
        description="Starts the operator console and prints its one-time URL. Against the deployed admin API "
        "(URL from the stack's AdminApiBaseUrl output, or --api-url), every call SigV4-signed with your AWS "
        "credentials; or against the local stack's front with --local.",
    )
    console.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    console.add_argument("--api-url", help="the admin API's URL (default: the stack's AdminApiBaseUrl output)")
    console.add_argument(
        "--local",
        nargs="?",
        const=DEFAULT_LOCAL_URL,
        metavar="URL",
        help=f"use the local stack (`make run`) instead, at URL (default {DEFAULT_LOCAL_URL}); nothing is signed",
    )
    console.add_argument("--open", action="store_true", help="also open the URL in your web browser")
    console.set_defaults(run=_console)
    return root


def main(argv: Sequence[str] | None = None, *, session: Any = None, environ: dict[str, str] | None = None) -> int:
    """Run one command; prints its JSON answer on stdout, or `{"error", "message"}` on stderr (exit 1, usage 2)."""
    env = dict(os.environ if environ is None else environ)
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    aws = Aws(
        session or boto3.Session(profile_name=args.profile, region_name=args.region),
        args.endpoint_url,
    )
    run: Command = args.run
    try:
        result = run(args, Resources(args, aws, env), aws, env)
    except CheckoutError as exc:
        print(json.dumps(exc.body()), file=sys.stderr)
        return 1
    except CliError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}), file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(json.dumps({"error": "aws_error", "message": str(exc)}), file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
