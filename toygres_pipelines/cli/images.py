"""`images`: the images a page at a time, one image's databases (--show), the ready base backups."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from records import ImageState, ValidationFailed, parse_uuid
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, CommandFailed
from toygres_pipelines.cli.output import as_json, clip, print_json, print_table, printable, size, when
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.images.contents import database_contents
from toygres_pipelines.images.verification import ImageCorrupt, read_manifest
from toygres_pipelines.pitr.summary import PitrSummary, pitr_summaries
from toygres_pipelines.resources_from_env import blob_from_env

IMAGES_PAGE_SIZE = 50


def cmd_show_image(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    """One image and its databases (the sizes of their dumps, their rows when the manifest counted
    them), read from its manifest, which is checked against the CMS checksum first."""
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


def add_images_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    images = add_command(sub, parent, "images", cmd_images, help="list images with their states, a page at a time")
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
