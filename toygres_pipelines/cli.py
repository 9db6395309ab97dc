"""`toygres-pipelines`: queue backups and restores in the CMS, list what the CMS holds.

The request commands apply the very rules the launchpad and the request sensors apply
(`validate_image_name` + `running_source` for backups, `check_request_fields` + `plan_restore`
for restores), then insert a `pending` row; the request sensors turn pending rows into runs.

Exit codes: 0 success, 2 invalid request or usage (`error: <field>: <rule>` on stderr),
3 CMS not configured / unreachable / not migrated, 1 anything else. No password (of the CMS
DSN or of an instance) is ever printed.

Why one module of this size: one function per command plus the parser; the request commands'
options are generated from the request records (`toygres_pipelines.forms`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

from records import (
    ImageRequest,
    ImageRequestFields,
    ImageState,
    Instance,
    InstanceRef,
    InstanceState,
    RequestState,
    RestoreRequest,
    RestoreRequestFields,
    ValidationFailed,
    parse_uuid,
    validate_image_name,
)
from records.parallel import validate_parallel_jobs
from records.requests import MalformedRequest
from records.units import human_bytes
from records.wal import LATEST
from resources.cms import CMSResource
from resources.platform.base import PlatformError
from toygres_pipelines.cli_lifecycle import add_lifecycle_commands
from toygres_pipelines.cli_status import add_status_command
from toygres_pipelines.forms import add_cli_arguments, fields_from_cli
from toygres_pipelines.images.verification import ImageCorrupt
from toygres_pipelines.pitr.cli import add_pitr_commands
from toygres_pipelines.resources_from_env import blob_from_env, platform_from_env
from toygres_pipelines.restores.config import plan_restore

DSN_ENV = "TOYGRES_CMS_DSN"
KEY_ENV = "TOYGRES_ENCRYPTION_KEY"

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID = 2
EXIT_CMS = 3

MANUAL_SUFFIX = "manual"
IMAGES_PAGE_SIZE = 50
IN_FLIGHT = (RequestState.pending, RequestState.accepted)
PASSWORD_IGNORED = "a restored instance keeps the source image's password; this one is stored nowhere"


class CommandFailed(Exception):
    """The command cannot do what was asked, for a reason its message gives in full (exit 1)."""


class CMSUnavailable(Exception):
    """The CMS is not configured, not reachable or not migrated (exit 3)."""


# --------------------------------------------------------------------------------------------
# Secrets never leave the process


def describe_dsn(dsn: str) -> str:
    """host/port/dbname/user of a DSN, never its password (nor the raw string)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable connection string"
    shown = [f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key)]
    return " ".join(shown) or "libpq defaults"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove passwords from a message: those given, and any user:password@ in a URL."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def redact_url(url: str | None) -> str | None:
    """A postgresql:// connection string without its password, if it carried one."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return redact(url)


def dsn_password(dsn: str | None) -> str | None:
    if not dsn:
        return None
    try:
        password = conninfo_to_dict(dsn).get("password")
        return None if password is None else str(password)
    except psycopg.Error:
        return None


# --------------------------------------------------------------------------------------------
# The CMS


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


# --------------------------------------------------------------------------------------------
# Output


def as_json(record: BaseModel, **extra: Any) -> dict[str, Any]:
    data = {**extra, **record.model_dump(mode="json")}
    for key in ("ip_connection_string", "dns_connection_string"):
        if key in data:
            data[key] = redact_url(data[key])
    return data


def print_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Aligned columns; None prints as '-'."""
    text_rows = [["-" if cell is None or cell == "" else str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *text_rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(none)\n")


def when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else None


def size(num_bytes: int | None) -> str | None:
    return None if num_bytes is None else human_bytes(num_bytes)


def endpoint(uri: str | None) -> str | None:
    """host:port of a connection string (`toygres-pipelines connect` prints the whole command)."""
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        return None


def clip(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------
# Commands


def default_image_name(k8s_name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{k8s_name}__{MANUAL_SUFFIX}-{stamp}"


def cmd_request_backup(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    # Imported here: the backup module pulls in the blob storage and platform clients.
    from toygres_pipelines.images.backup import check_name_free, running_source

    if args.image_name is not None:
        validate_image_name(args.image_name, field="name")
    validate_parallel_jobs(args.parallel_jobs)
    source = running_source(cms, platform_from_env(), args.source_instance)
    name = args.image_name if args.image_name is not None else default_image_name(source.k8s_name)
    validate_image_name(name, field="name")
    check_name_free(cms, name, field="name")
    for queued in cms.requests.list(ImageRequest, IN_FLIGHT):
        # A malformed row is never acted on (the sensor rejects it): it reserves no name.
        if not isinstance(queued, MalformedRequest) and queued.image_name == name:
            raise ValidationFailed("name", f"{name!r} is already requested by {queued.state} request {queued.id}")
    fields = fields_from_cli(args, ImageRequestFields, image_name=name, source_instance=source.k8s_name)
    request = cms.requests.create(fields)
    if args.json:
        print_json(as_json(request, kind="backup"), out)
    else:
        out.write(
            f"backup request {request.id} {request.state}: image {request.image_name!r}"
            f" of instance {source.namespace}/{source.k8s_name}\n"
        )
    return follow(args, cms, request, "backup", out) if args.wait else EXIT_OK


def cmd_request_restore(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    if not args.source_image_id:
        raise ValidationFailed("source_image_id", "required: the id or name of the image to restore (--image)")
    if args.latest:
        if args.target_time not in (None, LATEST):
            raise ValidationFailed(
                "target_time", f"--latest and --target-time {args.target_time!r} both given: choose one"
            )
        args.target_time = LATEST
    fields = fields_from_cli(args, RestoreRequestFields)
    if args.password is not None:
        sys.stderr.write(f"warning: --password is ignored: {PASSWORD_IGNORED}\n")
    # Named databases are checked against the image's manifest, so blob storage is read only then.
    blob = blob_from_env().process_config_and_initialize() if fields.databases else None
    try:
        plan = plan_restore(fields, cms, platform_from_env(), blob)
    except ImageCorrupt as error:  # the request is refused; the restore run is what marks an image corrupt
        image = cms.images.find(fields.source_image_id or "")
        name = image.name if image else fields.source_image_id
        raise ValidationFailed("source_image_id", f"image {name!r}: its manifest cannot be read: {error}") from error
    for queued in cms.requests.list(RestoreRequest, IN_FLIGHT):
        if not isinstance(queued, MalformedRequest) and queued.dns_label == fields.dns_label:
            raise ValidationFailed(
                "dns_label", f"{fields.dns_label!r} is already requested by {queued.state} request {queued.id}"
            )
    request = cms.requests.create(
        fields.model_copy(update={"source_image_id": str(plan.image_id), "namespace": plan.namespace})
    )
    if args.json:
        print_json(as_json(request, kind="restore"), out)
    else:
        out.write(
            f"restore request {request.id} {request.state}: instance {request.namespace}/{request.name}"
            f" from image {plan.image_name!r} ({plan.image_id})\n"
        )
    return follow(args, cms, request, "restore", out) if args.wait else EXIT_OK


FINAL_REQUEST_STATES = {RequestState.succeeded: EXIT_OK, RequestState.rejected: EXIT_INVALID, RequestState.failed: 1}


def follow(args: argparse.Namespace, cms: CMSResource, request: Any, kind: str, out: TextIO) -> int:
    """--wait: poll the CMS until the request ends, printing each change of the request and of the
    image or instance it makes; the exit code says how it ended (0 succeeded, 2 rejected, 1 failed)."""
    fetch = partial(cms.requests.get, ImageRequest) if kind == "backup" else partial(cms.requests.get, RestoreRequest)
    seen: dict[str, str] = {}
    out = sys.stderr if args.json else out  # --json: stdout holds the request's JSON alone

    def show(key: str, text: str) -> None:
        if seen.get(key) != text:
            seen[key] = text
            out.write(f"{when(datetime.now(UTC))} {text}\n")
            out.flush()

    deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
    while True:
        request = fetch(request.id) or request
        reason = f": {clip(request.reason, 300)}" if request.reason else ""
        final = request.state in FINAL_REQUEST_STATES
        if not final:  # pending/accepted come before the run; the end comes after it (below)
            show("request", f"{kind} request {request.id} {request.state}{reason}")
        if request.run_id:
            show("run", f"run {request.run_id} started (Dagster UI: Runs)")
        target = made_by(cms, request, kind)
        if target is not None:
            what = f"image {target.name}" if kind == "backup" else f"instance {target.namespace}/{target.k8s_name}"
            error = f": {clip(target.error_message, 300)}" if getattr(target, "error_message", None) else ""
            size_text = f" ({size(target.backup_size_bytes)})" if kind == "backup" and target.backup_size_bytes else ""
            show("target", f"{what} {target.state}{size_text}{error}")
        if final:
            show("request", f"{kind} request {request.id} {request.state}{reason}")
            if kind == "restore" and request.state is RequestState.succeeded and target is not None:
                out.write(f"connect: toygres-pipelines connect {target.k8s_name}\n")
            return FINAL_REQUEST_STATES[request.state]
        if deadline is not None and time.monotonic() > deadline:
            out.write(f"still {request.state} after {args.wait_timeout} s: stopped waiting (the request goes on)\n")
            return EXIT_UNEXPECTED
        time.sleep(args.poll_seconds)


def made_by(cms: CMSResource, request: Any, kind: str) -> Any:
    if not request.run_id:
        return None
    if kind == "backup":  # the image this request's run made (not an older one of the same name)
        image = cms.images.find(request.image_name)
        return image if image is not None and image.run_id == request.run_id else None
    return cms.instances.find_by_run(request.run_id)


def add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="follow the request to its end, printing each change (exit 0 succeeded, 2 rejected, 1 failed)",
    )
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="with --wait: how often to look (default: 2)")
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default: never); the request goes on",
    )


def cmd_show_image(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    """One image and its databases (the sizes of their dumps, their rows when the manifest counted
    them), read from its manifest, which is checked against the CMS checksum first."""
    from toygres_pipelines.images.contents import database_contents
    from toygres_pipelines.images.verification import read_manifest

    image = cms.images.find(args.show)
    if image is None:
        raise ValidationFailed("image", f"no image with {'id' if parse_uuid(args.show) else 'name'} {args.show!r}")
    try:
        manifest, _ = read_manifest(
            blob_from_env().process_config_and_initialize(), image.blob_path, image.backup_checksum
        )
    except ImageCorrupt as error:
        if image.state in (ImageState.creating, ImageState.failed, ImageState.deleted):
            raise ValidationFailed("image", f"{image.name!r} is {image.state}: it has no manifest to show") from error
        raise CommandFailed(
            f"image {image.name!r} is {image.state} but its manifest cannot be read: {error}"
        ) from error
    databases = database_contents(manifest)
    if args.json:
        print_json({"image": as_json(image), "databases": [d.model_dump() for d in databases]}, out)
        return EXIT_OK
    size_text = size(image.backup_size_bytes) or "-"
    out.write(
        f"image {image.name} ({image.id}): {image.state}, PostgreSQL {image.postgres_version}, {size_text}, "
        f"from {image.source_namespace}/{image.source_k8s_name} at {when(image.created_at)}\n"
    )
    print_table(
        ["DATABASE", "SIZE", "BYTES", "ROWS"],
        [[printable(d.database), size(d.size_bytes), d.size_bytes, d.rows] for d in databases],
        out,
    )
    return EXIT_OK


def printable(name: str) -> str:
    """A name on one line of a table: as it is, or quoted with its control characters escaped."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)


def page_bounds(args: argparse.Namespace) -> tuple[int | None, int]:
    """(limit, offset) of --limit/--page; ValidationFailed names the option."""
    if args.limit < 0:
        raise ValidationFailed("limit", f"{args.limit} must be 0 (every image) or a positive number of images per page")
    if args.page < 1:
        raise ValidationFailed("page", f"{args.page} must be 1 or more")
    if args.limit == 0:
        return None, 0
    return args.limit, (args.page - 1) * args.limit


def page_note(shown: int, total: int, limit: int | None, offset: int, page: int) -> str | None:
    """Where this page sits in the listing; None when it holds every image."""
    if limit is None or (offset == 0 and shown == total):
        return None
    pages = -(-total // limit)
    if not shown:
        return f"no images on page {page}: {total} images, {pages} pages of {limit}"
    note = f"images {offset + 1}-{offset + shown} of {total} (page {page} of {pages})"
    return note + (f": the next page is --page {page + 1}" if page < pages else "")


def cmd_images(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    if args.show is not None and not args.show.strip():
        raise ValidationFailed("image", f"--show needs an image id or name, not {args.show!r}")
    if args.show:
        return cmd_show_image(args, cms, out)
    limit, offset = page_bounds(args)
    images, total = cms.images.page(args.state, limit=limit, offset=offset)
    note = page_note(len(images), total, limit, offset, args.page)
    if args.json:
        print_json([as_json(image, kind="logical") for image in images], out)
        if note:
            sys.stderr.write(note + "\n")
        return EXIT_OK
    print_table(
        ["ID", "NAME", "KIND", "STATE", "SOURCE", "PG", "SIZE", "CREATED", "ERROR"],
        [
            [
                i.id,
                i.name,
                "logical",
                i.state,
                f"{i.source_namespace}/{i.source_k8s_name}",
                i.postgres_version,
                size(i.backup_size_bytes),
                when(i.created_at),
                clip(i.error_message),
            ]
            for i in images
        ],
        out,
    )
    if note:
        out.write(note + "\n")
    if not args.state and args.page == 1:
        print_base_backups(cms, out)
    return EXIT_OK


def print_base_backups(cms: CMSResource, out: TextIO) -> None:
    """The ready base backups (kind `base`, docs/pitr.md) with their instance's window and archive lag."""
    from toygres_pipelines.pitr.summary import PitrSummary, pitr_summaries

    backups = cms.base_backups.list()
    if not backups:
        return
    instances = {i.id: i for i in cms.instances.list() if i.id in {b.instance_id for b in backups}}
    summaries = pitr_summaries(cms, list(instances.values()), datetime.now(UTC)) or {}
    empty = PitrSummary()
    out.write("\nbase backups (point-in-time recovery; restore with --target-time or --latest):\n")
    print_table(
        ["ID", "KIND", "STATE", "SOURCE", "PG", "SIZE", "CONSISTENT AT", "PITR WINDOW", "ARCHIVE LAG (S)"],
        [
            [
                b.id,
                b.kind,
                b.state,
                f"{b.namespace}/{b.k8s_name}",
                b.postgres_version,
                size(b.size_bytes),
                when(b.consistent_at),
                summaries.get(b.k8s_name, empty).window_text(when),
                None if (lag := summaries.get(b.k8s_name, empty).lag_seconds) is None else f"{lag:.1f}",
            ]
            for b in backups
        ],
        out,
    )


def cmd_instances(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    instances = cms.instances.list(args.state)
    if args.json:
        print_json([as_json(instance) for instance in instances], out)
        return EXIT_OK
    print_table(
        ["ID", "NAME", "K8S NAME", "NAMESPACE", "STATE", "PG", "ENDPOINT", "CREATED", "ERROR"],
        [
            [
                i.id,
                i.user_name,
                i.k8s_name,
                i.namespace,
                i.state,
                i.postgres_version,
                endpoint(i.dns_connection_string or i.ip_connection_string),
                when(i.created_at),
                clip(i.error_message),
            ]
            for i in instances
        ],
        out,
    )
    return EXIT_OK


def cmd_requests(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    rows: list[tuple[str, Any]] = []
    if args.kind in (None, "backup"):
        rows += [("backup", r) for r in cms.requests.list(ImageRequest, args.state)]
    if args.kind in (None, "restore"):
        rows += [("restore", r) for r in cms.requests.list(RestoreRequest, args.state)]
    rows.sort(key=lambda pair: (pair[1].created_at, str(pair[1].id)))
    if args.json:
        print_json([as_json(request, kind=kind) for kind, request in rows], out)
        return EXIT_OK

    def describe(kind: str, r: Any) -> tuple[str, str]:
        if isinstance(r, MalformedRequest):
            return f"malformed row: {clip(r.malformed)}", f"image {r.source_image_id}" if kind == "restore" else "-"
        if kind == "backup":
            return f"image {r.image_name}", f"instance {r.source_instance}"
        return f"instance {r.namespace}/{r.name}", f"image {r.source_image_id}"

    print_table(
        ["ID", "KIND", "STATE", "TARGET", "SOURCE", "RUN", "CREATED", "REASON"],
        [[r.id, kind, r.state, *describe(kind, r), r.run_id, when(r.created_at), clip(r.reason)] for kind, r in rows],
        out,
    )
    return EXIT_OK


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def running_instance_named(cms: CMSResource, name: str) -> Instance:
    """The running instance restored under `name` (its user name), when exactly one is."""
    named = [i for i in cms.instances.list([InstanceState.running]) if i.user_name == name]
    if len(named) == 1:
        return named[0]
    if named:
        choices = ", ".join(sorted(i.k8s_name for i in named))
        raise ValidationFailed("instance", f"{name!r} names {len(named)} running instances: give one of {choices}")
    raise ValidationFailed("instance", f"no instance {name!r} in the CMS")


def read_password(ref: InstanceRef) -> str:
    return platform_from_env().read_instance_password(ref).get_secret_value()


def default_database(uri: str, password: Callable[[], str]) -> str:
    """The instance's application database when it has exactly one, else `postgres` (said on stderr)."""
    secret: str | None = None
    try:
        secret = password()
        with psycopg.connect(with_password(uri, secret), connect_timeout=5) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                    " AND datname <> 'postgres' ORDER BY 1"
                )
            ]
    except (psycopg.Error, ValidationFailed, PlatformError, OSError) as error:
        reason = redact(str(error).splitlines()[0] if str(error) else type(error).__name__, [secret])
        sys.stderr.write(
            f"# database postgres: the instance's databases could not be listed ({reason}); --database picks one\n"
        )
        return "postgres"
    if len(names) == 1:
        sys.stderr.write(
            f"# database {names[0]}: the instance's only application database (--database picks another)\n"
        )
        return names[0]
    listed = f" ({', '.join(printable(n) for n in names)})" if names else ""
    sys.stderr.write(f"# database postgres: {len(names)} application databases{listed}; --database picks one\n")
    return "postgres"


def cmd_connect(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    """A ready psql command for a running instance; its password only on request, from the platform's secret."""
    instance = cms.instances.find(args.instance) or running_instance_named(cms, args.instance)
    if instance.state is not InstanceState.running or not instance.ip_connection_string:
        raise ValidationFailed(
            "instance", f"{instance.k8s_name} is {instance.state}: only a running instance accepts connections"
        )
    ref = InstanceRef(k8s_name=instance.k8s_name, namespace=instance.namespace)
    database = args.database or default_database(instance.ip_connection_string, lambda: read_password(ref))
    uri = urlsplit(instance.ip_connection_string)._replace(path="/" + quote(database, safe="")).geturl()
    shown = uri
    if args.show_password:
        shown = with_password(uri, read_password(ref))
    # Quoted for the shell; a percent-encoded URI holds no single quote (encoded anyway, to be sure).
    command = "psql '" + shown.replace("'", "%27") + "'"
    if args.json:
        dns = instance.dns_connection_string
        print_json(
            {
                "instance": instance.k8s_name,
                "namespace": instance.namespace,
                "uri": shown,
                "psql": command,
                "dns_uri": dns,
            },
            out,
        )
    else:
        out.write(command + "\n")
    if not args.show_password:
        sys.stderr.write(
            "# psql asks for the password; --show-password prints a command with it "
            "(read from the instance's Secret, never from the CMS)\n"
        )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    applied = cms.migrations.apply()
    if args.json:
        print_json({"applied": applied, "versions": cms.migrations.applied()}, out)
    elif applied:
        out.write(f"applied migrations: {', '.join(applied)}\n")
    else:
        out.write(f"the CMS schema is up to date ({', '.join(cms.migrations.applied()) or 'no migrations'})\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Parser


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
        "terminal), 3 CMS not configured or unreachable, 4 status: an instance out of its windows, "
        "1 unexpected error.",
        parents=[_common(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    parent = [_common(suppress=True)]

    backup = sub.add_parser(
        "request-backup",
        parents=parent,
        help="queue an on-demand backup of a running instance",
        description="Validate and queue an on-demand backup (an image_requests row in state pending).",
    )
    add_cli_arguments(backup, ImageRequestFields, optional=["image_name"])
    add_wait_arguments(backup)
    backup.set_defaults(handler=cmd_request_backup)

    restore = sub.add_parser(
        "request-restore",
        parents=parent,
        help="queue a restore of an image into a new instance",
        description="Validate (the launchpad's rules) and queue a restore (a restore_requests row in state pending).",
    )
    # --image is checked by the command, so a missing one reads like every other rule: `error: source_image_id: ...`
    add_cli_arguments(restore, RestoreRequestFields, optional=["source_image_id"])
    add_wait_arguments(restore)
    restore.add_argument(
        "--latest",
        action="store_true",
        help="point-in-time restore to the newest recoverable second (the same as --target-time latest); "
        "--image then names a base backup",
    )
    # Not a request field: accepted for compatibility, never stored (a restore keeps the image's password).
    restore.add_argument(
        "--password", metavar="IGNORED", help=f"accepted for compatibility and ignored: {PASSWORD_IGNORED}"
    )
    restore.set_defaults(handler=cmd_request_restore)

    images = sub.add_parser("images", parents=parent, help="list images with their states, a page at a time")
    images.add_argument(
        "--state", action="append", choices=[s.value for s in ImageState], help="only this state (repeatable)"
    )
    images.add_argument(
        "--limit",
        type=int,
        default=IMAGES_PAGE_SIZE,
        help=f"images per page (default: {IMAGES_PAGE_SIZE}; 0: every image)",
    )
    images.add_argument("--page", type=int, default=1, help="which page, oldest images first (default: 1)")
    images.add_argument(
        "--show",
        metavar="IMAGE",
        help="one image (its name or id) with its databases: the size of each dump, and its rows when the manifest "
        "counted them (read from the image's manifest in blob storage)",
    )
    images.set_defaults(handler=cmd_images)

    instances = sub.add_parser("instances", parents=parent, help="list instances with their states")
    instances.add_argument(
        "--state", action="append", choices=[s.value for s in InstanceState], help="only this state (repeatable)"
    )
    instances.set_defaults(handler=cmd_instances)

    requests = sub.add_parser("requests", parents=parent, help="list backup and restore requests with their states")
    requests.add_argument("--kind", choices=["backup", "restore"], help="only backup or only restore requests")
    requests.add_argument(
        "--state", action="append", choices=[s.value for s in RequestState], help="only this state (repeatable)"
    )
    requests.set_defaults(handler=cmd_requests)

    connect = sub.add_parser(
        "connect",
        parents=parent,
        help="print a ready psql command for a running instance",
        description="Print `psql '<uri>'` for a running instance (its k8s_name or id). The password is left out "
        "(psql asks for it) unless --show-password: then it is read from the instance's Secret (the local platform's "
        "file or the Kubernetes Secret) and put in the URI.",
    )
    connect.add_argument("instance", metavar="INSTANCE", help="k8s_name or id of the instance")
    connect.add_argument(
        "--database",
        default=None,
        help="database to connect to (default: the instance's application database when it has exactly one, "
        "else postgres; finding it reads the password from the instance's Secret and connects once)",
    )
    connect.add_argument("--show-password", action="store_true", help="put the superuser password in the URI")
    connect.set_defaults(handler=cmd_connect)

    migrate = sub.add_parser("migrate", parents=parent, help="apply the CMS schema migrations")
    migrate.set_defaults(handler=cmd_migrate)

    add_lifecycle_commands(sub, parent)
    add_status_command(sub, parent)
    add_pitr_commands(sub, parent)
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
    except CMSUnavailable as unavailable:
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
