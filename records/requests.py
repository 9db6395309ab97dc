"""The requests users make, each declared once.

`RestoreRequestFields` (= `RestoreFormFields`, the launchpad's, + two columns no restore takes) and
`ImageRequestFields` are the one field list of each request. Everything
else derives from them: the launchpad Config (a subclass adding the job's own settings), the CMS row
(`RestoreRequest` / `ImageRequest` below add only the row's own columns; the CMS reads and writes
exactly the model's fields), the request sensor's run config and the CLI's arguments
(`toygres_pipelines.forms`). Adding a field is this one edit plus a migration.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from records.errors import ValidationFailed
from records.naming import DNS_LABEL_MAX, INSTANCE_NAME_MAX
from records.parallel import MAX_PARALLEL_JOBS, SINGLE_STREAM
from records.rows import Record
from records.states import RequestState


class RequestFields(BaseModel):
    """A request's fields, without the row's bookkeeping. An unknown field is an error, not dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, source: BaseModel) -> Self:
        """This request's fields taken from anything that carries them (a row, a launchpad config)."""
        return cls.model_validate(source.model_dump(include=set(cls.model_fields)))


class RestoreFormFields(RequestFields):
    """What a user asks of a restore: every field of the restore launchpad."""

    name: str = Field(
        description=f"The new instance's name (its user_name); DNS-1123, at most {INSTANCE_NAME_MAX} "
        "characters. Its Kubernetes name is this plus a short random suffix."
    )
    dns_label: str = Field(
        description=f"DNS label of the instance's address: 3-{DNS_LABEL_MAX} lowercase letters, digits and '-', "
        "starting with a letter (Azure's rule); must not be used by another creating or running instance."
    )
    source_image_id: str = Field(
        description="The image to restore: its id (uuid) or its name (`toygres-pipelines images` lists them). "
        "It must be ready.",
        json_schema_extra={"cli_flag": "--image"},
    )
    namespace: str | None = Field(
        default=None,
        description="Kubernetes namespace of the new instance; empty: the platform's own (TOYGRES_K8S_NAMESPACE). "
        "Any other must be enabled by the deployment (TOYGRES_K8S_INSTANCE_NAMESPACES)",
    )
    storage_size_gb: int = Field(
        default=10,
        description="Volume size in GiB; raised to the image's storage size when smaller",
        json_schema_extra={"cli_flag": "--storage-gb"},
    )
    internal: bool = Field(default=False, description="ClusterIP only (no public LoadBalancer address)")
    databases: list[str] | None = Field(
        default=None,
        description="The databases to restore, by their exact names (`toygres-pipelines images --show IMAGE` "
        "lists them); empty: all. Roles are always restored",
        json_schema_extra={"cli_flag": "--database"},
    )
    postgres_version: str | None = Field(
        default=None,
        description="PostgreSQL major of the new instance, e.g. 16; empty: the image's. It may be newer than the "
        "image's (upgrade on restore), never older",
    )
    target_time: str | None = Field(
        default=None,
        description="Point-in-time restore (docs/pitr.md): an ISO 8601 time with a zone, or `latest`; "
        "source_image_id then names a base backup (`pitr-status`, toygres_cms.base_backups) and the new instance "
        "is its instance replayed to that second. Refused, naming the window, when outside it",
    )


class RestoreRequestFields(RestoreFormFields):
    """A restore request as clients write it: the form's fields plus two columns of the request
    table that no restore takes (a request setting one is rejected; the launchpad has neither)."""

    runtime_image_id: str | None = Field(
        default=None, description="Not for restores: cannot be combined with source_image_id"
    )
    image_override: str | None = Field(
        default=None, description="Not for restores: cannot be combined with source_image_id"
    )


def require_source_image(source_image_id: str | None) -> str:
    """A restore names its image. The record requires the field, yet a CMS row's column is nullable
    and the CLI's --image optional to argparse: every entry point refuses a missing one with this rule."""
    if not source_image_id:
        raise ValidationFailed("source_image_id", "required: the id or name of the image to restore")
    return source_image_id


class BackupFields(RequestFields):
    """What a backup run is told: the launchpad form of the `image` asset, whose partition key
    is the image name."""

    source_instance: str = Field(
        description="The source instance: its k8s_name or id; it must be running",
        json_schema_extra={"cli_flag": "--instance"},
    )
    description: str | None = Field(default=None, description="Free text stored with the image")
    parallel_jobs: int = Field(
        default=SINGLE_STREAM,
        description=f"1: one pg_dump -Fc stream per database. 2-{MAX_PARALLEL_JOBS}: parallel mode, pg_dump -Fd -j "
        "N per database (directory format, staged on the job's scratch disk) and pg_restore -j N; worth it for "
        "databases with several large tables",
    )


class ImageRequestFields(BackupFields):
    """What a user asks of an on-demand backup: a backup and the name of the image it makes."""

    image_name: str = Field(
        description="The image name: 1-100 letters, digits, '_' or '-', not used by a live image",
        json_schema_extra={"cli_flag": "--name"},
    )


class _RequestRow(Record):
    id: uuid.UUID
    state: RequestState
    run_id: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime


class ImageRequest(ImageRequestFields, _RequestRow):
    """A row of toygres_cms.image_requests."""


class RestoreRequest(RestoreRequestFields, _RequestRow):
    """A row of toygres_cms.restore_requests."""

    # The column is nullable (any client may insert a row): the sensor rejects a row without it.
    source_image_id: str | None = None  # type: ignore[assignment]
    instance_id: uuid.UUID | None = None


class MalformedRequest(_RequestRow):
    """A request row that breaks its record's rules (a value a client wrote past the CMS's
    checks, e.g. `databases = ARRAY[NULL]`): read as far as it can be trusted, never acted on.
    The sensor rejects it with `malformed`; a pending one still counts as using the image it
    names (records.lifecycle), so a bad row never frees an image."""

    source_image_id: str | None = None
    malformed: str


def request_row(model: type[_RequestRow], data: dict[str, Any]) -> _RequestRow:
    """A request row as its record, or as a MalformedRequest saying which field broke which rule."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problem = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        source = data.get("source_image_id")
        known = {k: v for k, v in data.items() if k in _RequestRow.model_fields}
        return MalformedRequest.model_validate(
            {**known, "source_image_id": source if isinstance(source, str) else None, "malformed": problem}
        )


def is_request_model(model: type) -> bool:
    return isinstance(model, type) and issubclass(model, _RequestRow)
