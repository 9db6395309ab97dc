"""The parser of every command and `main`: one command run, its failure turned into an exit code and a message."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import psycopg

from records import ValidationFailed
from resources.cms import CMSResource
from toygres_pipelines.cli.cms_access import DSN_ENV, add_migrate_command, open_cms
from toygres_pipelines.cli.exits import (
    EXIT_CMS,
    EXIT_INVALID,
    EXIT_UNEXPECTED,
    CMSUnavailable,
    CommandFailed,
    DagsterUnavailable,
)
from toygres_pipelines.cli.images import add_images_command
from toygres_pipelines.cli.instances import add_connect_command, add_instances_command
from toygres_pipelines.cli.lifecycle import add_lifecycle_commands
from toygres_pipelines.cli.pitr import add_pitr_commands
from toygres_pipelines.cli.redaction import describe_dsn, dsn_password, redact
from toygres_pipelines.cli.requests import add_request_commands, add_requests_command
from toygres_pipelines.cli.runs import add_run_commands
from toygres_pipelines.cli.status import add_status_command


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with `error: ...` like validation errors (argparse's own
    convention), and never print the DSN."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(EXIT_INVALID)


def _common(suppress: bool) -> Parser:
    """Options accepted both before and after the subcommand."""
    default = argparse.SUPPRESS if suppress else None
    common = Parser(add_help=False)
    common.add_argument(
        "--dsn",
        default=default,
        help=f"libpq connection string of the CMS database (default: ${DSN_ENV})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="machine-readable output: JSON records as the CMS stores them",
    )
    common.add_argument(
        "--connect-timeout",
        type=int,
        default=argparse.SUPPRESS if suppress else 10,
        metavar="SECONDS",
        help="seconds to wait for a CMS connection (default: 10)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="toygres-pipelines",
        description="Queue backups and restores in the toygres CMS and list its images, instances and requests.",
        epilog="Exit codes: 0 ok, 2 invalid request (or a destructive command without --yes and without a "
        "terminal), 3 CMS not configured or unreachable (or, for drill and reverify, the Dagster webserver), "
        "4 status: an instance out of its windows, "
        "1 unexpected error (or, with --wait, a failed request or run).",
        parents=[_common(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    parent = [_common(suppress=True)]

    add_request_commands(sub, parent)
    add_images_command(sub, parent)
    add_instances_command(sub, parent)
    add_requests_command(sub, parent)
    add_connect_command(sub, parent)
    add_migrate_command(sub, parent)
    add_lifecycle_commands(sub, parent)
    add_status_command(sub, parent)
    add_pitr_commands(sub, parent)
    add_run_commands(sub, parent)
    return parser


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_INVALID
    handler: Callable[[argparse.Namespace, CMSResource, TextIO], int] = args.handler
    dsn = args.dsn or os.environ.get(DSN_ENV)
    secrets = [dsn_password(dsn), dsn]

    def fail(code: int, message: str) -> int:
        err.write(redact(f"error: {message}", secrets) + "\n")
        return code

    try:
        refuse_nul_bytes(args)
        cms = open_cms(args)
        return handler(args, cms, out)
    except ValidationFailed as invalid:
        return fail(EXIT_INVALID, str(invalid))
    except (CMSUnavailable, DagsterUnavailable) as unavailable:
        return fail(EXIT_CMS, str(unavailable))
    except CommandFailed as failed:
        return fail(EXIT_UNEXPECTED, str(failed))
    except psycopg.errors.UndefinedTable:
        return fail(
            EXIT_CMS,
            f"the CMS at {describe_dsn(dsn or '')} has no toygres_cms schema: run `toygres-pipelines migrate`",
        )
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return fail(
            EXIT_CMS,
            f"cannot reach the CMS ({DSN_ENV} / --dsn: {describe_dsn(dsn or '')}): {reason}",
        )
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    except Exception as error:  # noqa: BLE001 - the last line of defence: a message, exit 1
        return fail(EXIT_UNEXPECTED, f"unexpected {type(error).__name__}: {error}")


def refuse_nul_bytes(args: argparse.Namespace) -> None:
    """No CLI value may hold a NUL byte (PostgreSQL text cannot, nor can a name): refused naming
    the field, without echoing the value (it may be a DSN with its password)."""
    for field, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ValidationFailed(field, "holds a NUL byte (\\x00): no value may contain one")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
