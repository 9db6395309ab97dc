"""The CMS: the control plane's PostgreSQL database (schema `toygres_cms`). All SQL lives here.

Rows cross the boundary as the pydantic records of `records`. Every state change (the creation
of a row included) is written to `toygres_cms.events` in the same transaction as the change,
and every transition is checked against the records' transition tables while the row is locked
(`SELECT ... FOR UPDATE`).

CMSResource is composed, not mixed in: each table has its repository, an attribute of the
resource, and a repository's methods are reached through it only (`cms.images.find(ref)`):

    cms.instances      instances.py     toygres_cms.instances
    cms.images         images.py        toygres_cms.images (and their encrypted source passwords)
    cms.events         events.py        toygres_cms.events (read)
    cms.requests       requests.py      image_requests and restore_requests: one method per action,
                                        told the kind (the record: ImageRequest or RestoreRequest),
                                        e.g. `cms.requests.claim(RestoreRequest)`; listen() (the
                                        channel migration 013's trigger notifies), launch_lock()
    cms.drills         drills.py        toygres_cms.restore_drills
    cms.base_backups   base_backups.py  toygres_cms.base_backups (point-in-time recovery)
    cms.migrations     schema.py        versioned migrations (resources/migrations/NNN_name.sql), advisory lock

    resource.py     CMSResource: configuration, connections and the repositories above;
                    checked_dsn (a DSN libpq cannot parse is named with its rule, never quoted)
    queries.py      the shared query helper every repository is (insert, select, transition + event)
    tables.py       the tables as that helper sees them; unique violations as NameConflict
    claims.py       pending requests claimed FOR UPDATE SKIP LOCKED by the sensors
    encryption.py   Fernet encryption of stored source passwords
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
