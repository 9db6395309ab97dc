"""CMS rows of the entities: instances, images and the events of their state changes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from records.states import ImageState, ImageType, InstanceState


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
    retention_override: dict[str, Any] | None = None  # fields of RetentionPolicy this instance sets
    source_postgres_version: str | None = None  # restored: the image's major (postgres_version may be newer)

    @property
    def internal(self) -> bool:
        """The request's `internal` (see instance_columns)."""
        return not self.use_load_balancer

    @property
    def dns_label(self) -> str | None:
        """The request's `dns_label` (see instance_columns)."""
        return self.dns_name


def instance_columns(*, name: str, internal: bool, dns_label: str | None) -> dict[str, Any]:
    """A request's names as the instances table spells them (the CMS schema's columns): the one
    place they are renamed; `Instance.internal` and `Instance.dns_label` read them back."""
    return {"user_name": name, "use_load_balancer": not internal, "dns_name": dns_label}


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
    pinned: bool = False
    encryption_recipient: str | None = None


class Event(Record):
    id: int
    entity_type: str
    entity_id: uuid.UUID
    from_state: str | None
    to_state: str
    reason: str | None
    run_id: str | None
    created_at: datetime
