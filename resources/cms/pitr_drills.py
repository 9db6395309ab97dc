"""toygres_cms.pitr_drills: one row per finished PITR drill (records/drills.py PitrDrill)."""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime

from psycopg import sql
from psycopg.rows import class_row

from records.drills import DrillResult, PitrDrill
from resources.cms.errors import CMSError
from resources.cms.queries import Queries, fetch_one
from resources.cms.tables import SCHEMA

TABLE = sql.Identifier(SCHEMA, "pitr_drills")
COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in PitrDrill.model_fields)
REASON_MAX = 4000


class PitrDrillsTable(Queries):
    """`cms.pitr_drills`: one row per finished PITR drill."""

    def record(
        self,
        source_instance_id: uuid.UUID,
        result: DrillResult,
        reason: str | None,
        *,
        started_at: datetime,
        run_id: str | None = None,
        base_backup_id: uuid.UUID | None = None,
        target_time: datetime | None = None,
        replayed_at: datetime | None = None,
        rto_seconds: float | None = None,
        scratch: str | None = None,
    ) -> PitrDrill:
        """The drill's row; a run records once (a second call returns the first row)."""
        if result not in (DrillResult.passed, DrillResult.failed):
            raise CMSError("a PITR drill is recorded as passed or failed")
        values = {
            "source_instance_id": source_instance_id, "base_backup_id": base_backup_id, "run_id": run_id,
            "started_at": started_at, "result": result.value, "target_time": target_time,
            "replayed_at": replayed_at, "rto_seconds": rto_seconds, "scratch": scratch,
            "reason": reason[:REASON_MAX] if reason else None,
        }  # fmt: skip
        with self.connection() as conn:
            return fetch_one(
                conn.cursor(row_factory=class_row(PitrDrill)).execute(
                    sql.SQL(
                        "INSERT INTO {t} ({names}) VALUES ({params})"
                        " ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id RETURNING {c}"
                    ).format(
                        t=TABLE,
                        names=sql.SQL(", ").join(sql.Identifier(k) for k in values),
                        params=sql.SQL(", ").join(sql.Placeholder() * len(values)),
                        c=COLUMNS,
                    ),
                    list(values.values()),
                )
            )

    def list(self, *, source_instance_id: uuid.UUID | None = None) -> builtins.list[PitrDrill]:
        """PITR drills, newest first; of one instance when given."""
        where = sql.SQL("true") if source_instance_id is None else sql.SQL("source_instance_id = %s")
        query = sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY finished_at DESC, id")
        return self._pitr_drills(
            query.format(c=COLUMNS, t=TABLE, w=where), [] if source_instance_id is None else [source_instance_id]
        )

    def latest(self) -> builtins.list[PitrDrill]:
        """The newest PITR drill of each instance that has one."""
        query = sql.SQL(
            "SELECT DISTINCT ON (source_instance_id) {c} FROM {t} ORDER BY source_instance_id, finished_at DESC, id"
        )
        return self._pitr_drills(query.format(c=COLUMNS, t=TABLE), [])

    def _pitr_drills(self, query: sql.Composed, params: builtins.list) -> builtins.list[PitrDrill]:
        with self.connection() as conn:
            return conn.cursor(row_factory=class_row(PitrDrill)).execute(query, params).fetchall()
