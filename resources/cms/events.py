"""toygres_cms.events: every state change of every row, in order."""

from __future__ import annotations

import uuid

from psycopg import sql
from psycopg.rows import class_row

from records import (
    Event,
    parse_uuid,
)
from resources.cms.queries import Queries
from resources.cms.tables import (
    SCHEMA,
)


class EventsTable(Queries):
    """cms.events"""

    def of(self, entity_id: uuid.UUID | str) -> list[Event]:
        parsed = entity_id if isinstance(entity_id, uuid.UUID) else parse_uuid(str(entity_id))
        if parsed is None:
            return []
        with self.connection() as conn:
            return (
                conn.cursor(row_factory=class_row(Event))
                .execute(
                    sql.SQL(
                        "SELECT id, entity_type, entity_id, from_state, to_state, reason, run_id, created_at"
                        " FROM {} WHERE entity_id = %s ORDER BY id"
                    ).format(sql.Identifier(SCHEMA, "events")),
                    [parsed],
                )
                .fetchall()
            )
