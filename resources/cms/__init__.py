"""The CMS: the control plane's PostgreSQL database (schema `toygres_cms`). All SQL lives here.

Rows cross the boundary as the pydantic records of `records`. Every state change (the creation
of a row included) is written to `toygres_cms.events` in the same transaction as the change,
and every transition is checked against the records' transition tables while the row is locked
(`SELECT ... FOR UPDATE`).

    resource.py     CMSResource: configuration and connections, composed of the pieces below
    schema.py       versioned migrations (resources/migrations/NNN_name.sql), advisory lock
    encryption.py   Fernet encryption of stored source passwords
    queries.py      the shared query helper (insert, select, transition + event)
    tables.py       the tables as that helper sees them; unique violations as NameConflict
    instances.py, images.py, events.py, requests.py, drills.py   one repository per table
    claims.py       pending requests claimed FOR UPDATE SKIP LOCKED by the sensors
    errors.py       the resource's own errors
"""

from resources.cms.claims import ClaimedRequests
from resources.cms.errors import (
    CMSError,
    EncryptionKeyInvalid,
    ImageNotFound,
    InstanceNotFound,
    InvalidTransition,
    MigrationError,
    NameConflict,
    NotFound,
    PasswordUnavailable,
    RequestNotFound,
)
from resources.cms.resource import CMSResource
from resources.cms.schema import migrations
from resources.cms.tables import SCHEMA

__all__ = [
    "SCHEMA",
    "CMSError",
    "CMSResource",
    "ClaimedRequests",
    "EncryptionKeyInvalid",
    "ImageNotFound",
    "InstanceNotFound",
    "InvalidTransition",
    "MigrationError",
    "NameConflict",
    "NotFound",
    "PasswordUnavailable",
    "RequestNotFound",
    "migrations",
]
