"""What a restore request says, and the rules it must follow before anything is created.

The launchpad, the restore-request sensor and the CLI all go through `check_request_fields`
(rules on the request alone) and `plan_restore` (rules against the CMS).
"""

from __future__ import annotations

import uuid

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from records import (
    INSTANCE_NAME_MAX,
    Image,
    ImageState,
    ImageType,
    ValidationFailed,
    new_k8s_name,
    parse_uuid,
    validate_azure_dns_label,
    validate_dns_label,
)
from records.encryption import check_identity_for
from records.requests import RestoreRequestFields
from resources.cms import CMSResource
from resources.platform.base import PlatformResource

MAX_STORAGE_GB = 16384
# A restore job downloads, checks and pg_restores the whole image: a minute at the least, two
# days at the most (a hung job must not hold its pool slot for ever).
JOB_TIMEOUT_BOUNDS = (60, 2 * 24 * 3600)
READY_TIMEOUT_BOUNDS = (5, 3600)


class RestoreConfig(RestoreRequestFields, dg.Config):
    """The launchpad form of `restore_instance`: the restore request plus the job's own limits."""

    # No `password` field: Dagster stores run config in plaintext, and a restored instance keeps
    # the source image's password anyway. The launchpad refuses one; the CLI and the CMS request
    # API accept and ignore one with a warning.
    job_timeout_seconds: int = Field(
        default=3600,
        description=f"Upper bound for the restore job, {JOB_TIMEOUT_BOUNDS[0]}-{JOB_TIMEOUT_BOUNDS[1]} seconds",
    )
    ready_timeout_seconds: int = Field(
        default=600,
        description=f"How long the new server may take to accept connections, {READY_TIMEOUT_BOUNDS[0]}-"
        f"{READY_TIMEOUT_BOUNDS[1]} seconds",
    )


class RestorePlan(BaseModel):
    """A validated request: what will be created. Carries no secret."""

    model_config = ConfigDict(frozen=True)

    user_name: str
    k8s_name: str
    namespace: str
    dns_label: str
    storage_size_gb: int
    internal: bool
    image_id: uuid.UUID
    image_name: str
    image_type: ImageType
    postgres_version: str
    manifest_sha256: str
    blob_path: str


def check_request_fields(fields: RestoreRequestFields) -> None:
    """Rules on the request alone; each failure names its field."""
    if not fields.source_image_id:
        raise ValidationFailed("source_image_id", "required: the id or name of the image to restore")
    for other in ("runtime_image_id", "image_override"):
        if getattr(fields, other):
            raise ValidationFailed(other, "cannot be combined with source_image_id")
    validate_dns_label(fields.name, "name", max_length=INSTANCE_NAME_MAX)
    validate_azure_dns_label(fields.dns_label, "dns_label")
    if fields.namespace is not None:
        validate_dns_label(fields.namespace, "namespace")
    if not 1 <= fields.storage_size_gb <= MAX_STORAGE_GB:
        raise ValidationFailed("storage_size_gb", f"{fields.storage_size_gb} must be between 1 and {MAX_STORAGE_GB}")


def check_timeouts(config: RestoreConfig) -> None:
    for field, (low, high) in (
        ("job_timeout_seconds", JOB_TIMEOUT_BOUNDS),
        ("ready_timeout_seconds", READY_TIMEOUT_BOUNDS),
    ):
        value = getattr(config, field)
        if not low <= value <= high:
            raise ValidationFailed(field, f"{value} must be between {low} and {high} seconds")


def ready_image(cms: CMSResource, ref: str) -> Image:
    image = cms.find_image(ref)
    if image is None:
        kind = "id" if parse_uuid(ref) else "name"
        raise ValidationFailed("source_image_id", f"no image with {kind} {ref!r}")
    if image.state is not ImageState.ready:
        raise ValidationFailed("source_image_id", f"image {image.name!r} is {image.state}, it must be ready")
    if not image.backup_checksum:
        raise ValidationFailed("source_image_id", f"image {image.name!r} has no recorded checksum")
    return image


def plan_restore(fields: RestoreRequestFields, cms: CMSResource, platform: PlatformResource) -> RestorePlan:
    """All rules, the CMS and platform ones included. image_type and postgres_version come from the image."""
    check_request_fields(fields)
    namespace = platform.resolve_namespace(fields.namespace)
    image = ready_image(cms, fields.source_image_id or "")
    platform.check_postgres_version(image.postgres_version, "source_image_id", f"image {image.name!r}")
    check_identity_for(image.encryption_recipient, platform.age_identity_recipients, image.name)
    if cms.dns_name_in_use(fields.dns_label):
        raise ValidationFailed("dns_label", f"{fields.dns_label!r} is already used by another instance")
    return RestorePlan(
        user_name=fields.name,
        k8s_name=new_k8s_name(fields.name),
        namespace=namespace,
        dns_label=fields.dns_label,
        storage_size_gb=max(fields.storage_size_gb, image.storage_size_gb),
        internal=fields.internal,
        image_id=image.id,
        image_name=image.name,
        image_type=image.image_type,
        postgres_version=image.postgres_version,
        manifest_sha256=image.backup_checksum or "",
        blob_path=image.blob_path,
    )
