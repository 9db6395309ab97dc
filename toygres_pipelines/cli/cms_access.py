"""The CMS the commands talk to ($TOYGRES_CMS_DSN or --dsn), and `migrate`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, TextIO

import psycopg
from psycopg.conninfo import conninfo_to_dict

from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, CMSUnavailable
from toygres_pipelines.cli.output import print_json
from toygres_pipelines.cli.parsing import add_command

DSN_ENV = "TOYGRES_CMS_DSN"
KEY_ENV = "TOYGRES_ENCRYPTION_KEY"


def open_cms(args: argparse.Namespace) -> CMSResource:
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise CMSUnavailable(f"the CMS is not configured: set {DSN_ENV} or pass --dsn")
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        # psycopg's message quotes part of the string, which may be the password.
        raise CMSUnavailable(f"{DSN_ENV} (or --dsn) is not a valid libpq connection string") from None
    # These commands never encrypt or decrypt a password, so any valid Fernet key will do when
    # TOYGRES_ENCRYPTION_KEY is not set.
    key = os.environ.get(KEY_ENV) or CMSResource.generate_key()
    return CMSResource(dsn=dsn, encryption_key=key, connect_timeout=args.connect_timeout)


def cmd_migrate(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    applied = cms.migrations.apply()
    if args.json:
        print_json({"applied": applied, "versions": cms.migrations.applied()}, out)
    elif applied:
        out.write(f"applied migrations: {', '.join(applied)}\n")
    else:
        out.write(f"the CMS schema is up to date ({', '.join(cms.migrations.applied()) or 'no migrations'})\n")
    return EXIT_OK


def add_migrate_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    add_command(sub, parent, "migrate", cmd_migrate, help="apply the CMS schema migrations")
