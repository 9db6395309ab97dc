"""The CMS tables as the shared query code sees them, and how a unique violation reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from records import (
    IMAGE_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    REQUEST_TRANSITIONS,
    Image,
    ImageRequest,
    ImageState,
    Instance,
    InstanceState,
    RequestState,
    RestoreRequest,
)
from resources.cms.errors import (
    ImageNotFound,
    InstanceNotFound,
    NameConflict,
    NotFound,
    RequestNotFound,
)

SCHEMA = "toygres_cms"


@dataclass(frozen=True)
class Table:
    """One CMS table: its row model, state machine and the columns a transition may set."""

    entity_type: str
    table: str
    model: type[Any]
    state_enum: type
    transitions: dict
    fields: frozenset[str]
    not_found: type[NotFound]

    @property
    def table_id(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.table)

    @property
    def columns(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(name) for name in self.model.model_fields)


INSTANCE = Table(
    "instance",
    "instances",
    Instance,
    InstanceState,
    INSTANCE_TRANSITIONS,
    frozenset({"ip_connection_string", "dns_connection_string", "external_ip", "error_message"}),
    InstanceNotFound,
)
IMAGE = Table(
    "image",
    "images",
    Image,
    ImageState,
    IMAGE_TRANSITIONS,
    frozenset({"backup_size_bytes", "backup_checksum", "error_message", "encryption_recipient"}),
    ImageNotFound,
)
IMAGE_REQUEST = Table(
    "image_request",
    "image_requests",
    ImageRequest,
    RequestState,
    REQUEST_TRANSITIONS,
    frozenset(),
    RequestNotFound,
)
RESTORE_REQUEST = Table(
    "restore_request",
    "restore_requests",
    RestoreRequest,
    RequestState,
    REQUEST_TRANSITIONS,
    frozenset({"instance_id"}),
    RequestNotFound,
)

# Unique constraints / indexes -> (field, rule) for NameConflict.
_CONFLICTS: dict[str, tuple[str, str]] = {
    "instances_pkey": ("instance_id", "an instance with this id already exists"),
    "instances_k8s_name_key": ("k8s_name", "must be unique among all instances"),
    "instances_dns_name_active_key": (
        "dns_name",
        "is already used by another instance in state creating or running",
    ),
    "images_pkey": ("image_id", "an image with this id already exists"),
    "images_name_active_key": (
        "name",
        "is already used by another image that is not failed or deleted",
    ),
    "image_requests_pkey": ("request_id", "a request with this id already exists"),
    "restore_requests_pkey": ("request_id", "a request with this id already exists"),
}


def conflict(error: psycopg.errors.UniqueViolation, values: dict[str, Any]) -> NameConflict:
    constraint = error.diag.constraint_name or ""
    field, rule = _CONFLICTS.get(constraint, (constraint or "unique", str(error).strip()))
    value = values.get(field)
    return NameConflict(field, f"{value!r} {rule}" if value is not None else rule)


def state_values(kind: Table, states: Iterable[Any] | None) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    return [kind.state_enum(s).value for s in states]
