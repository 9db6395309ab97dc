"""Records that cross a boundary (CMS rows, job results, requests) and the naming rules.

Everything that validates user input lives here so that the launchpad, the sensors and the CLI
apply the very same rules.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

IMAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
K8S_NAME_SUFFIX_LENGTH = 5
# k8s_name feeds StatefulSet pod names (<name>-0) and the controller-revision-hash label, which
# limit the StatefulSet name to 52 characters; leave room for "-" + the random suffix.
K8S_NAME_MAX = 52
INSTANCE_NAME_MAX = K8S_NAME_MAX - 1 - K8S_NAME_SUFFIX_LENGTH
DNS_LABEL_MAX = 63


class ValidationFailed(ValueError):
    """Bad input: the message names the field and the rule it breaks."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


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


def validate_image_name(name: str, field: str = "name") -> str:
    if not IMAGE_NAME_PATTERN.fullmatch(name or ""):  # fullmatch: `$` alone lets "x\n" through
        raise ValidationFailed(
            field, f"{name!r} must be 1-100 characters of letters, digits, '_' or '-'"
        )
    return name


def validate_dns_label(value: str, field: str, max_length: int = DNS_LABEL_MAX) -> str:
    if not value or len(value) > max_length:
        raise ValidationFailed(field, f"{value!r} must be 1-{max_length} characters long")
    if not DNS1123_LABEL.fullmatch(value):
        raise ValidationFailed(
            field,
            f"{value!r} must be a DNS-1123 label: lowercase letters, digits and '-',"
            " starting and ending with a letter or digit",
        )
    return value


def new_k8s_name(name: str) -> str:
    """The instance's Kubernetes name: the user's name plus a short random suffix."""
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(K8S_NAME_SUFFIX_LENGTH))
    return f"{name}-{suffix}"


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class Instance(Record):
    id: uuid.UUID
    user_name: str
    k8s_name: str
    namespace: str
    postgres_version: str
    storage_size_gb: int
    use_load_balancer: bool
    dns_name: str | None = None
    ip_connection_string: str | None = None
    dns_connection_string: str | None = None
    external_ip: str | None = None
    state: InstanceState
    image_type: ImageType
    source_image_id: uuid.UUID | None = None
    error_message: str | None = None
    run_id: str | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class Image(Record):
    id: uuid.UUID
    name: str
    description: str | None = None
    source_instance_id: uuid.UUID | None = None
    source_k8s_name: str
    source_namespace: str
    blob_storage_url: str
    blob_container: str
    blob_path: str
    storage_size_gb: int
    postgres_version: str
    image_type: ImageType
    backup_size_bytes: int | None = None
    backup_checksum: str | None = None
    state: ImageState
    run_id: str | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None = None
    deleted_at: datetime | None = None


class Event(Record):
    id: int
    entity_type: str
    entity_id: uuid.UUID
    from_state: str | None
    to_state: str
    reason: str | None
    run_id: str | None
    created_at: datetime


class InstanceRef(Record):
    """What a platform needs to find an instance's objects."""

    k8s_name: str
    namespace: str


class BackupFile(Record):
    """One file of an image, as the backup script records it in manifest.json."""

    path: str = Field(description="Blob name relative to the image's blob path")
    kind: str = Field(description="globals (pg_dumpall --globals-only) or database (pg_dump -Fc)")
    database: str | None = None
    size_bytes: int
    sha256: str


class BackupManifest(Record):
    """manifest.json, written by the backup script beside the dump files."""

    format_version: int
    image_name: str
    source_instance: str
    source_namespace: str
    postgres_version: str
    server_version_num: int
    dump_format: str
    started_at: datetime
    finished_at: datetime
    tools: dict[str, str]
    files: list[BackupFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


class JobResult(Record):
    name: str
    succeeded: bool
    log_tail: list[str] = Field(default_factory=list)
    reason: str | None = None


class Endpoints(Record):
    host: str
    port: int
    external_ip: str | None = None
    dns_name: str | None = None


class ConnectionStrings(Record):
    ip: str
    dns: str | None


class ImageRequest(Record):
    id: uuid.UUID
    image_name: str
    source_instance: str
    description: str | None = None
    state: RequestState
    run_id: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime


class RestoreRequest(Record):
    id: uuid.UUID
    name: str
    dns_label: str
    source_image_id: str | None = None
    namespace: str
    storage_size_gb: int
    internal: bool
    runtime_image_id: str | None = None
    image_override: str | None = None
    state: RequestState
    instance_id: uuid.UUID | None = None
    run_id: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime


__all__ = [name for name in dir() if not name.startswith("_")] + ["SecretStr"]
