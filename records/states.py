"""The state of each CMS row kind and the transitions the CMS allows (every change is an event)."""

from __future__ import annotations

from enum import StrEnum


class ImageState(StrEnum):
    creating = "creating"
    ready = "ready"
    failed = "failed"
    deleting = "deleting"
    deleted = "deleted"
    corrupt = "corrupt"  # failed verification at restore; offered again only once re-verified


class InstanceState(StrEnum):
    creating = "creating"
    running = "running"
    stopped = "stopped"
    deleting = "deleting"
    deleted = "deleted"
    failed = "failed"


class ImageType(StrEnum):
    stock = "stock"
    pg_durable = "pg_durable"


class RequestState(StrEnum):
    pending = "pending"
    accepted = "accepted"
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"


IMAGE_TRANSITIONS: dict[ImageState, set[ImageState]] = {
    ImageState.creating: {ImageState.ready, ImageState.failed},
    ImageState.ready: {ImageState.deleting, ImageState.corrupt},
    ImageState.corrupt: {ImageState.ready, ImageState.deleting},
    ImageState.failed: {ImageState.deleting, ImageState.deleted},
    ImageState.deleting: {ImageState.deleted, ImageState.failed},
    ImageState.deleted: set(),
}

INSTANCE_TRANSITIONS: dict[InstanceState, set[InstanceState]] = {
    InstanceState.creating: {InstanceState.running, InstanceState.failed},
    InstanceState.running: {InstanceState.stopped, InstanceState.deleting, InstanceState.failed},
    InstanceState.stopped: {InstanceState.running, InstanceState.deleting},
    InstanceState.deleting: {InstanceState.deleted, InstanceState.failed},
    InstanceState.failed: {InstanceState.deleting, InstanceState.deleted},
    InstanceState.deleted: set(),
}

REQUEST_TRANSITIONS: dict[RequestState, set[RequestState]] = {
    RequestState.pending: {RequestState.accepted, RequestState.rejected},
    RequestState.accepted: {RequestState.succeeded, RequestState.failed},
    RequestState.succeeded: set(),
    RequestState.failed: set(),
    RequestState.rejected: set(),
}
