"""Deleting and pinning images, on request or by retention, through one set of checks.

An image is deleted in this order: its row `ready|corrupt|failed -> deleting` (committed, with
an event: from here no restore is offered it), then its blobs, then `deleting -> deleted` (with
an event), then its `image` partition once no row of that name is left but deleted ones. A
failure at any point leaves the row untouched or `deleting`, never `ready` without its blobs;
the next retention run finishes a `deleting` image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from records import (
    Image,
    ImageState,
    InstanceState,
    LogSink,
    RequestState,
    RestoreRequest,
    ValidationFailed,
    parse_uuid,
)
from records import lifecycle as rules
from records.drills import DrillResult
from records.lifecycle import images_in_use
from resources.blob import BlobStorageResource
from resources.cms import CMSResource

PINNABLE = (ImageState.ready, ImageState.corrupt)


class Partitions(Protocol):
    """The `image` partitions: what a Dagster instance offers (`keys`/`delete`)."""

    def keys(self) -> list[str]: ...

    def delete(self, key: str) -> None: ...


class DagsterPartitions:
    def __init__(self, instance, name: str):
        self.instance = instance
        self.name = name

    def keys(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(self.name))

    def delete(self, key: str) -> None:
        self.instance.delete_dynamic_partition(self.name, key)


def find(cms: CMSResource, ref: str) -> Image:
    image = cms.images.find(ref)
    if image is None:
        raise ValidationFailed("image", f"no image {ref!r} (an image id or name)")
    return image


def in_use_by(cms: CMSResource, images: Iterable[Image]) -> dict:
    """Which of these images a pending/accepted restore request, a creating instance or a running
    drill uses."""
    return images_in_use(
        images,
        cms.requests.list(RestoreRequest, [RequestState.pending, RequestState.accepted]),
        cms.instances.list([InstanceState.creating]),
        cms.drills.list(results=[DrillResult.running]),
    )


def check_deletable(cms: CMSResource, image: Image) -> None:
    """The deletion rules, checked up front for a clear refusal; `cms.images.begin_deletion` checks
    them again under the image row's lock."""
    rules.check_deletable(image, in_use_by(cms, [image]).get(image.id))


def pin_image(cms: CMSResource, ref: str, pinned: bool = True) -> Image:
    image = find(cms, ref)
    if pinned and image.state not in PINNABLE:
        raise ValidationFailed(
            "image", f"image {image.name!r} is {image.state}: only a ready or corrupt image can be pinned"
        )
    return cms.images.set_pinned(image.id, pinned)


def delete_image(
    cms: CMSResource,
    blob: BlobStorageResource,
    ref: str,
    *,
    run_id: str | None,
    log: LogSink,
    partitions: Partitions | None,
) -> Image:
    """Delete one image on request (job `delete_image`, CLI `delete-image`)."""
    image = find(cms, ref)
    check_deletable(cms, image)
    matched = "id" if parse_uuid(ref) is not None and parse_uuid(ref) == image.id else "name"
    return remove_image(
        cms, blob, image, reason="deleted on request", run_id=run_id, log=log, partitions=partitions, matched=matched
    )


def remove_image(
    cms: CMSResource,
    blob: BlobStorageResource,
    image: Image,
    *,
    reason: str,
    run_id: str | None,
    log: LogSink,
    partitions: Partitions | None,
    keep_newest_ready: bool = False,
    matched: str | None = None,
) -> Image:
    """deleting (event) -> blobs -> deleted (event) -> partition; see the module docstring.
    keep_newest_ready (retention): refused when the image is its instance's newest ready image
    at the moment it would turn deleting."""
    image = cms.images.begin_deletion(image.id, reason=reason, run_id=run_id, keep_newest_ready=keep_newest_ready)
    removed = blob.delete_prefix(image.blob_path)
    deleted = cms.images.transition(
        image.id,
        ImageState.deleted,
        reason=f"{reason}: {removed} blob(s) removed",
        run_id=run_id,
        expected=ImageState.deleting,
    )
    how = f", matched by {matched}" if matched else ""
    log(f"image {image.name} ({image.id}{how}) deleted: {removed} blob(s) under {image.blob_path} removed")
    if partitions is not None:
        tidy_partitions(cms.images.list(), partitions, log, names={image.name})
    return deleted


def tidy_partitions(
    images: list[Image], partitions: Partitions, log: LogSink, names: set[str] | None = None
) -> list[str]:
    """Remove the partitions whose image rows are all deleted. A key with no row at all is left:
    its backup may not have started yet."""
    states: dict[str, set[ImageState]] = {}
    for image in images:
        states.setdefault(image.name, set()).add(image.state)
    removed = []
    for key in partitions.keys():
        if names is not None and key not in names:
            continue
        if states.get(key) == {ImageState.deleted}:
            partitions.delete(key)
            removed.append(key)
            log(f"partition {key} removed: its image is deleted")
    return removed
