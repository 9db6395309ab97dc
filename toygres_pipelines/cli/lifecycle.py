"""The CLI's lifecycle commands: pin, delete-image, delete-instance, retention, retention-plan.

They call the very functions the Dagster jobs call (`toygres_pipelines.lifecycle`), so the same
checks refuse the same things with the same reasons.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import dagster as dg

from records import ImageState, InstanceState, ValidationFailed
from records.retention import RetentionPolicy
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK
from toygres_pipelines.cli.output import print_json
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.cli.settings import automation_settings
from toygres_pipelines.images.assets import IMAGE_PARTITIONS
from toygres_pipelines.lifecycle import images as image_rules
from toygres_pipelines.lifecycle import instances as instance_rules
from toygres_pipelines.lifecycle.images import DagsterPartitions, delete_image, find, pin_image
from toygres_pipelines.lifecycle.instances import delete_instance
from toygres_pipelines.lifecycle.retention_job import IMAGES_PREFIX, compute_plan, stray_folders
from toygres_pipelines.resources_from_env import blob_from_env, platform_from_env


def cmd_pin(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    image = pin_image(cms, args.image, pinned=not args.off)
    if args.json:
        print_json(image.model_dump(mode="json"), out)
    else:
        out.write(f"image {image.name} ({image.id}) {'pinned' if image.pinned else 'unpinned'}\n")
    return EXIT_OK


def confirm(args: argparse.Namespace, what: str) -> None:
    """A destructive command goes on only with --yes or a `y` typed at a terminal."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise ValidationFailed(
            "--yes",
            f"{args.command} removes {what} for good: pass --yes to confirm (stdin is not a terminal, so nothing asks)",
        )
    sys.stderr.write(f"{args.command.split('-', 1)[0]} {what}? This cannot be undone. [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise ValidationFailed("--yes", "not confirmed: nothing deleted")


def cmd_delete_image(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    target = find(cms, args.image)
    if target.state is ImageState.deleted:
        # Idempotent: deleting what is gone succeeds (exit 0), like delete-instance.
        if args.json:
            print_json({**target.model_dump(mode="json"), "log": ["already deleted"]}, out)
        else:
            out.write(f"image {target.name} ({target.id}) is already deleted\n")
        return EXIT_OK
    image_rules.check_deletable(cms, target)  # a refusal comes before the question
    confirm(args, f"image {target.name!r} ({target.id}) and its blobs")
    blob = blob_from_env().process_config_and_initialize()
    lines: list[str] = []
    if os.environ.get("DAGSTER_HOME"):
        with dg.DagsterInstance.get() as instance:
            image = delete_image(
                cms,
                blob,
                args.image,
                run_id=None,
                log=lines.append,
                partitions=DagsterPartitions(instance, IMAGE_PARTITIONS),
            )
    else:
        image = delete_image(cms, blob, args.image, run_id=None, log=lines.append, partitions=None)
        lines.append("DAGSTER_HOME is not set: the next retention run removes the image's partition")
    if args.json:
        print_json({**image.model_dump(mode="json"), "log": lines}, out)
    else:
        out.write("".join(f"{line}\n" for line in lines))
    return EXIT_OK


def cmd_delete_instance(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    target = cms.instances.find(args.instance)
    try:
        if target is not None and target.state is not InstanceState.deleted:
            instance_rules.check_deletable(target, args.force)  # a refusal comes before the question
            confirm(args, f"instance {target.k8s_name!r} ({target.namespace}) with its server, volume and secret")
        lines: list[str] = []
        instance = delete_instance(cms, platform_from_env(), args.instance, force=args.force, log=lines.append)
    except ValidationFailed as refused:
        if refused.field != "force":
            raise
        raise ValidationFailed("--force", refused.rule.replace("pass force", "pass --force")) from None
    if args.json:
        print_json({**instance.model_dump(mode="json", exclude={"ip_connection_string", "dns_connection_string"})}, out)
    else:
        out.write("".join(f"{line}\n" for line in lines))
    return EXIT_OK


def parse_assignments(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ValidationFailed("--set", f"{item!r} must be FIELD=VALUE (a field of the retention policy)")
        if field.strip() not in RetentionPolicy.model_fields:
            allowed = ", ".join(RetentionPolicy.model_fields)
            raise ValidationFailed(field.strip(), f"not a field of the retention policy; allowed: {allowed}")
        pairs[field.strip()] = value.strip()
    return pairs


def cmd_retention(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    instance = cms.instances.find(args.instance)
    if instance is None:
        raise ValidationFailed("instance", f"no instance {args.instance!r} (an instance id or k8s_name)")
    default = automation_settings().retention
    override = dict(instance.retention_override or {})
    if args.clear:
        override = {}
    if args.set:
        override |= parse_assignments(args.set)
        effective = default.with_override(override)  # ValidationFailed names the field
        override = {field: getattr(effective, field) for field in override}
    if args.clear or args.set:
        instance = cms.instances.set_retention_override(instance.id, override or None)
    effective = default.with_override(instance.retention_override)
    if args.json:
        print_json(
            {
                "instance": instance.k8s_name,
                "override": instance.retention_override,
                "effective": effective.model_dump(),
            },
            out,
        )
    else:
        out.write(f"instance {instance.namespace}/{instance.k8s_name}: override {instance.retention_override or '-'}\n")
        out.write(describe_policy(effective))
    return EXIT_OK


def describe_policy(policy: RetentionPolicy) -> str:
    return "".join(f"  {field} = {value}\n" for field, value in policy.model_dump().items())


def cmd_retention_plan(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    now = datetime.now(UTC)
    folders = blob_from_env().process_config_and_initialize().list_folders(IMAGES_PREFIX)  # before the rows
    images, plan = compute_plan(cms, automation_settings().retention, now)
    strays = stray_folders(folders, images)
    if args.json:
        print_json(
            {
                "kept": [d.model_dump(mode="json") for d in plan.kept],
                "expired": [d.model_dump(mode="json") for d in plan.expired],
                "stray_blob_folders": strays,
            },
            out,
        )
        return EXIT_OK
    out.write(plan.markdown(now) + "\n\n")
    out.write(f"dry run: {len(plan.expired)} image(s) would be deleted, {len(plan.kept)} kept")
    out.write(f"; stray blob folders: {', '.join(strays) or 'none'}\n")
    return EXIT_OK


def add_yes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (required when stdin is not a terminal: without it the command exits 2)",
    )


def add_lifecycle_commands(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    pin = add_command(sub, parent, "pin", cmd_pin, help="pin an image (never deleted) or unpin it (--off)")
    pin.add_argument("image", help="image id or name")
    pin.add_argument("--off", action="store_true", help="unpin")

    image = add_command(
        sub,
        parent,
        "delete-image",
        cmd_delete_image,
        help="delete an image: its blobs, its CMS row (deleted) and its partition",
        description="Refused when the image is pinned or used by a pending/accepted restore or a creating "
        "instance. Needs the blob settings (TOYGRES_BLOB_*); removes the partition when DAGSTER_HOME is set.",
    )
    image.add_argument("image", help="image id or name")
    add_yes(image)

    instance = add_command(
        sub,
        parent,
        "delete-instance",
        cmd_delete_instance,
        help="delete an instance a restore created: server, service, volume, secret; frees its DNS label",
    )
    instance.add_argument("instance", help="instance id or k8s_name")
    instance.add_argument("--force", action="store_true", help="also an instance no toygres restore created")
    add_yes(instance)

    retention = add_command(
        sub,
        parent,
        "retention",
        cmd_retention,
        help="show or set an instance's retention override (fields of the default policy it changes)",
    )
    retention.add_argument("instance", help="instance id or k8s_name")
    retention.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help=f"override one field ({', '.join(RetentionPolicy.model_fields)}); repeatable",
    )
    retention.add_argument("--clear", action="store_true", help="drop the override: the default applies")

    add_command(
        sub,
        parent,
        "retention-plan",
        cmd_retention_plan,
        help="dry run: show what the retention job would keep (and why) and delete, deleting nothing",
    )
