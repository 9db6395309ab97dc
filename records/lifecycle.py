"""Lifecycle rules: which images are in use, and when an image may be deleted. The CMS applies
them inside the transaction that starts a deletion; the retention plan applies them too."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

from records.drills import Drill, DrillResult
from records.errors import ValidationFailed
from records.naming import parse_uuid
from records.requests import MalformedRequest, RestoreRequest
from records.rows import Image, Instance
from records.states import ImageState, InstanceState, RequestState

DELETABLE = (ImageState.ready, ImageState.corrupt, ImageState.failed, ImageState.deleting)


def images_in_use(
    images: Iterable[Image],
    restore_requests: Iterable[RestoreRequest | MalformedRequest],
    instances: Iterable[Instance],
    drills: Iterable[Drill] = (),
) -> dict[uuid.UUID, str]:
    """Images a pending/accepted restore request, a creating instance (a restore or drill under
    way) or a running restore drill (its scratch instance running, its counts not yet compared)
    uses, each with who uses it and through which field."""
    # What a request's source_image_id may say: an image's id, or its name (then every live image
    # of that name counts). Looked up, not searched: a fleet has tens of thousands of images.
    by_ref: dict[str, list[Image]] = defaultdict(list)
    for image in images:
        by_ref[str(image.id)].append(image)
        if image.state is not ImageState.deleted:
            by_ref[image.name].append(image)
    used: dict[uuid.UUID, str] = {}
    for instance in instances:
        if instance.state is InstanceState.creating and instance.source_image_id is not None:
            used.setdefault(instance.source_image_id, f"source_image_id of creating instance {instance.k8s_name}")
    for drill in drills:
        if drill.result is DrillResult.running:
            used.setdefault(drill.image_id, f"image of running restore drill {drill.id} (run {drill.run_id})")
    for request in restore_requests:
        if request.state not in (RequestState.pending, RequestState.accepted) or not request.source_image_id:
            continue
        for image in by_ref.get(canonical_image_ref(request.source_image_id), []):
            used.setdefault(image.id, f"source_image_id of {request.state} restore request {request.id}")
    return used


def group_of(image: Image) -> str:
    """The instance an image belongs to for retention: its source instance's id, else (an image
    taken before ids were recorded) its namespace/name."""
    return (
        str(image.source_instance_id)
        if image.source_instance_id
        else f"{image.source_namespace}/{image.source_k8s_name}"
    )


def newest_first(images: Iterable[Image]) -> list[Image]:
    return sorted(images, key=lambda i: (i.created_at, str(i.id)), reverse=True)


def check_not_newest_ready(image: Image, group: Iterable[Image]) -> None:
    """Retention never deletes the newest ready image of an instance: `group` is every image of
    image's instance as it is now (read under the lock the deletion holds)."""
    ready = newest_first(i for i in group if i.state is ImageState.ready and group_of(i) == group_of(image))
    if image.state is ImageState.ready and ready and ready[0].id == image.id:
        raise ValidationFailed(
            "image",
            f"image {image.name!r} is the newest ready image of instance "
            f"{image.source_namespace}/{image.source_k8s_name}: retention always keeps one",
        )


def canonical_image_ref(ref: str) -> str:
    """An image id in any spelling uuid.UUID reads (upper case, braces, urn:uuid:, no dashes) in
    its one canonical spelling; a name as it is (names are never UUID-shaped). The CMS stores
    request rows in this spelling too (migration 011)."""
    parsed = parse_uuid(ref)
    return str(parsed) if parsed is not None else ref


def check_deletable(image: Image, used_by: str | None) -> None:
    """The rules every deletion follows (on request and by retention); each names its rule."""
    if image.pinned:
        raise ValidationFailed(
            "image", f"image {image.name!r} is pinned: unpin it first (toygres-pipelines pin {image.name} --off)"
        )
    if used_by is not None:
        raise ValidationFailed("image", f"image {image.name!r} is in use: it is the {used_by}")
    if image.state not in DELETABLE:
        raise ValidationFailed(
            "image",
            f"image {image.name!r} is {image.state}: only a {', '.join(s.value for s in DELETABLE)} image is deleted",
        )
