"""CMSResource: the toygres CMS (PostgreSQL, schema toygres_cms) as one Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from records import ValidationFailed
from resources.cms.base_backups import BaseBackupsTable
from resources.cms.drills import DrillsTable
from resources.cms.encryption import PasswordBox
from resources.cms.events import EventsTable
from resources.cms.images import ImagesTable
from resources.cms.instances import InstancesTable
from resources.cms.pitr_drills import PitrDrillsTable
from resources.cms.requests import RequestsTable
from resources.cms.schema import Migrations

CMS_DSN_ENV = "TOYGRES_CMS_DSN"
# libpq's own message for a DSN it cannot parse quotes the text around the fault (e.g. the tail of
# an unquoted password with a space): it is never shown, this rule is.
DSN_RULE = (
    "libpq cannot parse it: key=value pairs (a value with spaces in single quotes) or a postgresql:// URI"
    " (the value and libpq's message are not shown: they may hold the password)"
)


def checked_dsn(field: str, dsn: str) -> str:
    """`dsn` if libpq parses it; else ValidationFailed naming `field` and DSN_RULE, never the value."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ValidationFailed(field, DSN_RULE) from None
    return dsn


class CMSResource(dg.ConfigurableResource):
    """The toygres CMS (PostgreSQL, schema toygres_cms), composed of one repository per table:
    `cms.instances`, `cms.images`, `cms.events`, `cms.requests`, `cms.drills`, `cms.base_backups`, `cms.pitr_drills`,
    and `cms.migrations` (the schema). Each repository is a small `Queries` over this resource's
    connections; each call opens a short connection, so one resource serves many threads at once.
    """

    dsn: str = Field(description="libpq connection string of the CMS database (TOYGRES_CMS_DSN)")
    encryption_key: str = Field(
        description="Fernet key encrypting stored passwords (TOYGRES_ENCRYPTION_KEY); see generate_key()"
    )
    connect_timeout: int = Field(default=10, description="Seconds to wait for a CMS connection")

    @staticmethod
    def generate_key() -> str:
        return PasswordBox.generate_key()

    def _connect(self, autocommit: bool) -> psycopg.Connection:
        """A connection; a DSN libpq cannot parse is a psycopg error naming the rule, not quoting it
        (psycopg parses the DSN before it connects: its ProgrammingError is that parse's)."""
        try:
            return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=autocommit)
        except psycopg.ProgrammingError:
            raise psycopg.ProgrammingError(str(ValidationFailed(CMS_DSN_ENV, DSN_RULE))) from None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A new connection in a transaction: commits when the block ends, rolls back on error."""
        conn = self._connect(autocommit=False)
        try:
            with conn:  # commit on success, rollback on exception, then close
                yield conn
        finally:
            if not conn.closed:
                conn.close()

    def autocommit_connection(self) -> psycopg.Connection:
        return self._connect(autocommit=True)

    def passwords(self) -> PasswordBox:
        return PasswordBox(self.encryption_key)

    @property
    def instances(self) -> InstancesTable:
        return InstancesTable(self)

    @property
    def images(self) -> ImagesTable:
        return ImagesTable(self)

    @property
    def events(self) -> EventsTable:
        return EventsTable(self)

    @property
    def requests(self) -> RequestsTable:
        return RequestsTable(self)

    @property
    def drills(self) -> DrillsTable:
        return DrillsTable(self)

    @property
    def base_backups(self) -> BaseBackupsTable:
        return BaseBackupsTable(self)

    @property
    def pitr_drills(self) -> PitrDrillsTable:
        return PitrDrillsTable(self)

    @property
    def migrations(self) -> Migrations:
        return Migrations(self)
