"""The request commands (request-backup, request-restore, with --wait) and the `requests` listing."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO

from records import (
    ImageRequest,
    ImageRequestFields,
    RequestState,
    RestoreRequest,
    RestoreRequestFields,
    ValidationFailed,
    validate_image_name,
)
from records.parallel import validate_parallel_jobs
from records.requests import MalformedRequest, RequestFields, require_source_image
from records.wal import LATEST
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_INVALID, EXIT_OK, EXIT_UNEXPECTED
from toygres_pipelines.cli.output import as_json, clip, print_json, print_table, size, when
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.forms import add_cli_arguments, fields_from_cli
from toygres_pipelines.images.backup import check_name_free, running_source
from toygres_pipelines.images.verification import ImageCorrupt
from toygres_pipelines.resources_from_env import blob_from_env, platform_from_env
from toygres_pipelines.restores.config import plan_restore

MANUAL_SUFFIX = "manual"

IN_FLIGHT = (RequestState.pending, RequestState.accepted)
PASSWORD_IGNORED = "a restored instance keeps the source image's password; this one is stored nowhere"


def default_image_name(k8s_name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{k8s_name}__{MANUAL_SUFFIX}-{stamp}"


def cmd_request_backup(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    if args.image_name is not None:
        validate_image_name(args.image_name, field="name")
    validate_parallel_jobs(args.parallel_jobs)
    source = running_source(cms, platform_from_env(), args.source_instance)
    name = args.image_name if args.image_name is not None else default_image_name(source.k8s_name)
    validate_image_name(name, field="name")
    check_name_free(cms, name, field="name")
    refuse_requested_twice(cms.requests.list(ImageRequest, IN_FLIGHT), "image_name", name, field="name")
    fields = fields_from_cli(args, ImageRequestFields, image_name=name, source_instance=source.k8s_name)
    request = cms.requests.create(fields)
    what = f"image {request.image_name!r} of instance {source.namespace}/{source.k8s_name}"
    return queued(args, cms, request, "backup", what, out)


def cmd_request_restore(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    require_source_image(args.source_image_id)
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
    refuse_requested_twice(
        cms.requests.list(RestoreRequest, IN_FLIGHT), "dns_label", fields.dns_label, field="dns_label"
    )
    request = cms.requests.create(
        fields.model_copy(update={"source_image_id": str(plan.image_id), "namespace": plan.namespace})
    )
    what = f"instance {request.namespace}/{request.name} from image {plan.image_name!r} ({plan.image_id})"
    return queued(args, cms, request, "restore", what, out)


def refuse_requested_twice(in_flight: list[Any], key: str, value: str, field: str) -> None:
    """What a pending or accepted request already asks for (an image name, a DNS label) is not asked
    for again. A malformed row is never acted on (the sensor rejects it): it reserves nothing."""
    for request in in_flight:
        if not isinstance(request, MalformedRequest) and getattr(request, key) == value:
            raise ValidationFailed(field, f"{value!r} is already requested by {request.state} request {request.id}")


def queued(args: argparse.Namespace, cms: CMSResource, request: Any, kind: str, what: str, out: TextIO) -> int:
    """The queued request said (or printed as JSON), then followed to its end with --wait."""
    if args.json:
        print_json(as_json(request, kind=kind), out)
    else:
        out.write(f"{kind} request {request.id} {request.state}: {what}\n")
    return follow(args, cms, request, kind, out) if args.wait else EXIT_OK


FINAL_REQUEST_STATES = {
    RequestState.succeeded: EXIT_OK,
    RequestState.rejected: EXIT_INVALID,
    RequestState.failed: EXIT_UNEXPECTED,
}


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


def add_request_command(
    sub: Any,
    parent: Sequence[argparse.ArgumentParser],
    name: str,
    handler: Callable[..., int],
    record: type[RequestFields],
    optional: str,
    **options: Any,
) -> argparse.ArgumentParser:
    """A request command: one option per field of its record (`optional`: the command fills it in), --wait."""
    command = add_command(sub, parent, name, handler, **options)
    add_cli_arguments(command, record, optional=[optional])
    add_wait_arguments(command)
    return command


def add_request_commands(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    add_request_command(
        sub,
        parent,
        "request-backup",
        cmd_request_backup,
        ImageRequestFields,
        optional="image_name",
        help="queue an on-demand backup of a running instance",
        description="Validate and queue an on-demand backup (an image_requests row in state pending).",
    )
    # --image is checked by the command, so a missing one reads like every other rule: `error: source_image_id: ...`
    restore = add_request_command(
        sub,
        parent,
        "request-restore",
        cmd_request_restore,
        RestoreRequestFields,
        optional="source_image_id",
        help="queue a restore of an image into a new instance",
        description="Validate (the launchpad's rules) and queue a restore (a restore_requests row in state pending).",
    )
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


def add_requests_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    requests = add_command(
        sub, parent, "requests", cmd_requests, help="list backup and restore requests with their states"
    )
    requests.add_argument("--kind", choices=["backup", "restore"], help="only backup or only restore requests")
    requests.add_argument(
        "--state", action="append", choices=[s.value for s in RequestState], help="only this state (repeatable)"
    )
