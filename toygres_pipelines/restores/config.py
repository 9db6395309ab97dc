"""What a restore request says, and the rules it must follow before anything is created.

The launchpad, the restore-request sensor and the CLI all go through `check_request_fields`
(rules on the request alone) and `plan_restore` (rules against the CMS, the platform and, for a
selection of databases, the image's verified manifest).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from records import (
    INSTANCE_NAME_MAX,
    BackupManifest,
    Image,
    ImageState,
    ImageType,
    ValidationFailed,
    new_k8s_name,
    parse_uuid,
    shown,
    validate_azure_dns_label,
    validate_dns_label,
)
from records.bounds import MAX_JOB_SECONDS
from records.encryption import check_identity_for
from records.requests import RestoreFormFields, RestoreRequestFields, require_source_image
from records.wal import BaseBackup, RecoveryPlanFile, parse_target_time
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.verification import read_manifest
from toygres_pipelines.pitr.window import plan_recovery

MAX_STORAGE_GB = 16384
# A restore job downloads, checks and pg_restores the whole image: a minute at the least.
JOB_TIMEOUT_BOUNDS = (60, MAX_JOB_SECONDS)
READY_TIMEOUT_BOUNDS = (5, 3600)
# A PostgreSQL major since 10 is one number (16), never 9.6-style or with a minor (16.2).
POSTGRES_MAJOR = re.compile(r"[1-9][0-9]+")


def job_timeout_field() -> Any:
    """The restore job's limit as every form that launches a restore declares it (the launchpad's,
    the drill's); check_timeouts holds it to JOB_TIMEOUT_BOUNDS."""
    low, high = JOB_TIMEOUT_BOUNDS
    return Field(default=3600, description=f"Upper bound for the restore job, {low}-{high} seconds")


def ready_timeout_field() -> Any:
    """How long a restored server may take to accept connections; check_timeouts holds it to READY_TIMEOUT_BOUNDS."""
    low, high = READY_TIMEOUT_BOUNDS
    return Field(
        default=600, description=f"How long the new server may take to accept connections, {low}-{high} seconds"
    )


def request_description(field: str, then: str = "") -> str:
    """The request's description of `field` (declared once, in records/requests.py), plus `then`."""
    return " ".join(filter(None, [RestoreFormFields.model_fields[field].description, then]))


class RestoreConfig(RestoreFormFields, dg.Config):
    """The launchpad form of `restore_instance`: the restore request plus the job's own limits.

    The launchpad opens with every optional field's default, but leaves a None default out: here
    those fields default to empty, which `request_fields` reads as None (the request's default)."""

    # No `password` field: Dagster stores run config in plaintext, and a restored instance keeps
    # the source image's password anyway. The launchpad refuses one; the CLI and the CMS request
    # API accept and ignore one with a warning.
    namespace: str = Field(default="", description=request_description("namespace"))
    databases: list[str] = Field(default=[], description=request_description("databases"))
    # Any: YAML reads 16 as a number and "16" as text; both mean PostgreSQL 16 (request_fields).
    postgres_version: Any = Field(
        default="", description=request_description("postgres_version", '(written 16 or "16")')
    )
    target_time: str = Field(
        default="", description=request_description("target_time", "Empty: a logical restore of an image")
    )
    job_timeout_seconds: int = job_timeout_field()
    ready_timeout_seconds: int = ready_timeout_field()

    def request_fields(self) -> RestoreRequestFields:
        """The restore request this form stands for: empty fields are the request's defaults, a
        major written as a number is the same major; the job's own limits left out."""
        values = self.model_dump(include=set(RestoreFormFields.model_fields))
        for field in ("namespace", "databases", "target_time"):
            if not values[field]:
                values[field] = None
        values["postgres_version"] = written_major(self.postgres_version)
        return RestoreRequestFields.model_validate(values)


def written_major(value: Any) -> str | None:
    """A major as the launchpad's YAML reads it: 16 (a number) or "16" (text); empty: none."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise ValidationFailed("postgres_version", f"{shown(value)} must be a PostgreSQL major version such as 16")


class RestorePlan(BaseModel):
    """A validated request: what will be created. Carries no secret."""

    model_config = ConfigDict(frozen=True)

    request: RestoreRequestFields = Field(
        description="The request as asked: its names (name, dns_label, internal) flow unchanged from here"
    )
    k8s_name: str
    namespace: str
    storage_size_gb: int
    image_id: uuid.UUID
    image_name: str
    image_type: ImageType
    postgres_version: str = Field(description="The new instance's major: the image's, or the newer one asked for")
    source_postgres_version: str = Field(description="The image's major")
    selected_databases: list[str] | None = Field(
        default=None, description="The databases to restore, checked against the image; None: all"
    )
    manifest_sha256: str
    blob_path: str
    point_in_time: str | None = Field(default=None, description="A point-in-time restore's target (docs/pitr.md)")
    recovery: RecoveryPlanFile | None = Field(
        default=None, description="Its base backup and WAL, planned against the window (None: a logical image)"
    )


def new_instance(fields: RestoreRequestFields, namespace: str, source_size_gb: int) -> dict[str, Any]:
    """The plan's new instance, as both kinds of restore make it: the request as asked (its names
    flow unchanged), a fresh Kubernetes name, and at least the source's storage."""
    return {
        "request": fields,
        "k8s_name": new_k8s_name(fields.name),
        "namespace": namespace,
        "storage_size_gb": max(fields.storage_size_gb, source_size_gb),
    }


def check_request_fields(fields: RestoreRequestFields) -> None:
    """Rules on the request alone; each failure names its field."""
    require_source_image(fields.source_image_id)
    for other in ("runtime_image_id", "image_override"):
        if getattr(fields, other):
            raise ValidationFailed(other, "cannot be combined with source_image_id")
    validate_dns_label(fields.name, "name", max_length=INSTANCE_NAME_MAX)
    validate_azure_dns_label(fields.dns_label, "dns_label")
    if fields.namespace is not None:
        validate_dns_label(fields.namespace, "namespace")
    if not 1 <= fields.storage_size_gb <= MAX_STORAGE_GB:
        raise ValidationFailed("storage_size_gb", f"{fields.storage_size_gb} must be between 1 and {MAX_STORAGE_GB}")
    if fields.databases is not None:
        check_database_names(fields.databases)
    if fields.postgres_version is not None and not POSTGRES_MAJOR.fullmatch(fields.postgres_version):
        raise ValidationFailed(
            "postgres_version", f"{fields.postgres_version!r} must be a PostgreSQL major version such as 16"
        )


def check_database_names(names: list[str]) -> None:
    """A database name may hold any character but NUL; each is named once."""
    if not names:
        raise ValidationFailed("databases", "name at least one database, or leave the field out to restore all")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ValidationFailed("databases", f"{shown(name)} is empty")
        if "\x00" in name:
            raise ValidationFailed("databases", f"{shown(name)} holds a NUL byte, which no database name can")
        if name in seen:
            raise ValidationFailed("databases", f"{shown(name)} is named twice")
        seen.add(name)


def chosen_databases(requested: list[str] | None, manifest: BackupManifest, image_name: str) -> list[str] | None:
    """The requested databases, each checked against what the image holds; None: all of them."""
    if requested is None:
        return None
    held = [f.database for f in manifest.files if f.kind == "database" and f.database is not None]
    unknown = [name for name in requested if name not in held]
    if unknown:
        raise ValidationFailed(
            "databases",
            f"{', '.join(map(repr, unknown))}: no such database in the image; image {image_name!r} holds: "
            + ", ".join(map(repr, held)),
        )
    return list(requested)


def target_postgres_version(image_version: str, requested: str | None, image_name: str) -> str:
    """The new instance's major: the image's, or a newer one; pg_restore cannot go back a major."""
    if requested is None:
        return image_version
    if int(requested) < int(image_version):
        raise ValidationFailed(
            "postgres_version",
            f"{requested} is older than PostgreSQL {image_version} of image {image_name!r}: a restore can keep or "
            "raise the major, never lower it",
        )
    return requested


def check_timeouts(config: RestoreConfig) -> None:
    for field, (low, high) in (
        ("job_timeout_seconds", JOB_TIMEOUT_BOUNDS),
        ("ready_timeout_seconds", READY_TIMEOUT_BOUNDS),
    ):
        value = getattr(config, field)
        if not low <= value <= high:
            raise ValidationFailed(field, f"{value} must be between {low} and {high} seconds")


def ready_image(cms: CMSResource, ref: str) -> Image:
    image = cms.images.find(ref, field="source_image_id")
    if image is None:
        kind = "id" if parse_uuid(ref) else "name"
        raise ValidationFailed("source_image_id", f"no image with {kind} {shown(ref)}")
    if image.state is not ImageState.ready:
        raise ValidationFailed("source_image_id", f"image {image.name!r} is {image.state}, it must be ready")
    if not image.backup_checksum:
        raise ValidationFailed("source_image_id", f"image {image.name!r} has no recorded checksum")
    return image


def request_source(fields: RestoreRequestFields, cms: CMSResource) -> Image | BaseBackup:
    """The rules the request and the CMS alone answer: the request's own, the image (ready; the major
    kept or raised) or, for a point in time, the base backup, and the DNS label free. plan_restore
    starts with them; the run coordinator applies them when a run is submitted (it has no platform)."""
    check_request_fields(fields)
    source: Image | BaseBackup
    if fields.target_time is not None:
        source = point_in_time_source(fields, cms)
    else:
        source = ready_image(cms, fields.source_image_id or "")
        target_postgres_version(source.postgres_version, fields.postgres_version, source.name)
    if cms.instances.dns_name_in_use(fields.dns_label):
        raise ValidationFailed("dns_label", f"{fields.dns_label!r} is already used by another instance")
    return source


def plan_restore(
    fields: RestoreRequestFields,
    cms: CMSResource,
    platform: PlatformResource,
    blob: BlobStorageResource | None = None,
) -> RestorePlan:
    """All rules, the CMS and platform ones included. image_type comes from the image, the major
    from the image unless a newer one is asked for. With `blob`, named databases are checked
    against the image's manifest (verified against the CMS checksum); without it (the request
    sensor) the run's validate step checks them, still before anything is created."""
    source = request_source(fields, cms)
    namespace = platform.resolve_namespace(fields.namespace)
    if isinstance(source, BaseBackup):
        return plan_point_in_time(fields, source, namespace, cms, platform, blob)
    image = source
    target = target_postgres_version(image.postgres_version, fields.postgres_version, image.name)
    field, subject = (
        ("source_image_id", f"image {image.name!r}")
        if fields.postgres_version is None
        else ("postgres_version", f"the target of image {image.name!r}")
    )
    platform.check_postgres_version(target, field, subject)
    platform.check_server_image(target, image.image_type, field, subject)
    platform.check_exposure(fields.internal)
    check_identity_for(image.encryption_recipient, platform.age_identity_recipients, image.name)
    databases = fields.databases
    if databases is not None and blob is not None:
        manifest, _ = read_manifest(blob, image.blob_path, image.backup_checksum)
        databases = chosen_databases(databases, manifest, image.name)
    return RestorePlan(
        **new_instance(fields, namespace, image.storage_size_gb),
        image_id=image.id,
        image_name=image.name,
        image_type=image.image_type,
        postgres_version=target,
        source_postgres_version=image.postgres_version,
        selected_databases=databases,
        manifest_sha256=image.backup_checksum or "",
        blob_path=image.blob_path,
    )


def point_in_time_source(fields: RestoreRequestFields, cms: CMSResource) -> BaseBackup:
    """A restore with `target_time` (docs/pitr.md): source_image_id names a ready base backup; same
    major, every database."""
    parse_target_time(fields.target_time)
    if fields.databases is not None:
        raise ValidationFailed("databases", "a point-in-time restore restores every database")
    base = cms.base_backups.get(fields.source_image_id or "")
    if base is None or base.state.value != "ready":
        raise ValidationFailed(
            "source_image_id", f"no ready base backup {fields.source_image_id!r} (`pitr-status` lists the windows)"
        )
    if fields.postgres_version not in (None, base.postgres_version):
        raise ValidationFailed(
            "postgres_version",
            f"a point-in-time restore keeps the major of its base backup ({base.postgres_version}); "
            f"restore to {base.postgres_version}, then upgrade with a logical image",
        )
    return base


def plan_point_in_time(
    fields: RestoreRequestFields,
    base: BaseBackup,
    namespace: str,
    cms: CMSResource,
    platform: PlatformResource,
    blob: BlobStorageResource | None,
) -> RestorePlan:
    """The base backup's instance and window (with `blob`; the request sensor reads no blob storage,
    the run's validate step does) checked before anything is created."""
    target = parse_target_time(fields.target_time)
    source = cms.instances.get(base.instance_id)
    if source is None:
        raise ValidationFailed("source_image_id", f"base backup {base.id} has no instance")
    platform.check_postgres_version(base.postgres_version, "source_image_id", f"base backup {base.id}")
    recovery = plan_recovery(cms, blob, source, target)[1] if blob is not None else None
    return RestorePlan(
        **new_instance(fields, namespace, source.storage_size_gb),
        image_id=base.id,
        image_name=f"base backup {base.id} of {source.k8s_name}",
        image_type=source.image_type,
        postgres_version=base.postgres_version,
        source_postgres_version=base.postgres_version,
        manifest_sha256="",
        blob_path=base.blob_path,
        point_in_time=fields.target_time,
        recovery=recovery,
    )
