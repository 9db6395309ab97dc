"""toygres_cms.restore_drills: one row per restore drill (records/drills.py)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from records import ImageState, ValidationFailed
from records.drills import Drill, DrillResult
from resources.cms.errors import CMSError
from resources.cms.queries import Queries, fetch_one
from resources.cms.tables import SCHEMA

TABLE = sql.Identifier(SCHEMA, "restore_drills")
IMAGES = sql.Identifier(SCHEMA, "images")
COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in Drill.model_fields)
REASON_MAX = 4000


class DrillsTable(Queries):
    """cms.drills"""

    def start(
        self,
        image_id: uuid.UUID,
        source_instance_id: uuid.UUID | None,
        run_id: str,
        started_at: datetime | None = None,
    ) -> Drill:
        """The drill of this run, or the one already started by it. `started_at` (default: the CMS's
        now) is given by the drill itself, so its recovery time is measured on one clock. The image
        row is share-locked first: a deletion starting now (cms.images.begin_deletion, FOR UPDATE) waits
        for this drill's row and then sees it; one that committed first leaves the image not ready,
        and the drill is refused (ValidationFailed "image") rather than holding a deleting image."""
        with self.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT name, state FROM {} WHERE id = %s FOR SHARE").format(IMAGES), [image_id]
            ).fetchone()
            if row is None:
                raise ValidationFailed("image", f"no image with id {str(image_id)!r}")
            if row[1] != ImageState.ready.value:
                raise ValidationFailed("image", f"image {row[0]!r} is {row[1]}, it must be ready")
            return fetch_one(
                conn.cursor(row_factory=class_row(Drill)).execute(
                    sql.SQL(
                        "INSERT INTO {t} (image_id, source_instance_id, run_id, started_at)"
                        " VALUES (%s, %s, %s, coalesce(%s, now()))"
                        " ON CONFLICT (run_id) DO UPDATE SET run_id = EXCLUDED.run_id RETURNING {c}"
                    ).format(t=TABLE, c=COLUMNS),
                    [image_id, source_instance_id, run_id, started_at],
                )
            )

    def finish(
        self,
        drill_id: uuid.UUID,
        result: DrillResult,
        reason: str | None,
        *,
        recovery_seconds: float | None = None,
        seconds_per_gib: float | None = None,
        backup_size_bytes: int | None = None,
        tables_checked: int | None = None,
    ) -> Drill:
        """Settle a running drill; a drill already settled is returned unchanged (first writer wins)."""
        if result is DrillResult.running:
            raise CMSError("a drill is finished with passed, failed or uncounted")
        with self.connection() as conn:
            row = (
                conn.cursor(row_factory=class_row(Drill))
                .execute(
                    sql.SQL(
                        "UPDATE {t} SET result = %s, reason = %s, finished_at = now(), recovery_seconds = %s,"
                        " seconds_per_gib = %s, backup_size_bytes = %s, tables_checked = %s"
                        " WHERE id = %s AND result = 'running' RETURNING {c}"
                    ).format(t=TABLE, c=COLUMNS),
                    [
                        result.value,
                        reason[:REASON_MAX] if reason else None,
                        recovery_seconds,
                        seconds_per_gib,
                        backup_size_bytes,
                        tables_checked,
                        drill_id,
                    ],
                )
                .fetchone()
            )
        return row if row is not None else self._drill_where(sql.SQL("id = %s"), [drill_id])[0]

    def find_by_run(self, run_id: str) -> Drill | None:
        found = self._drill_where(sql.SQL("run_id = %s"), [run_id])
        return found[0] if found else None

    def list(
        self, *, image_id: uuid.UUID | None = None, results: Iterable[DrillResult] | None = None
    ) -> builtins.list[Drill]:
        """Drills, newest first; of one image and/or with one of `results` when given."""
        where: builtins.list[sql.Composable] = [sql.SQL("true")]
        params: builtins.list[object] = []
        if image_id is not None:
            where.append(sql.SQL("image_id = %s"))
            params.append(image_id)
        if results is not None:
            where.append(sql.SQL("result = ANY(%s)"))
            params.append([r.value for r in results])
        return self._drill_where(sql.SQL(" AND ").join(where), params)

    def with_scratch_left(self) -> builtins.list[Drill]:
        """Finished drills whose scratch instance (the instance their run created) is not deleted."""
        return self._drill_where(
            sql.SQL(
                "result <> 'running'"
                " AND EXISTS (SELECT FROM {i} i WHERE i.run_id = {t}.run_id AND i.state <> 'deleted')"
            ).format(i=sql.Identifier(SCHEMA, "instances"), t=TABLE),
            [],
        )

    def _drill_where(self, where: sql.Composable, params: builtins.list) -> builtins.list[Drill]:
        with self.connection() as conn:
            return drills_in(conn, where, params)


def running_drills_of(conn: psycopg.Connection, image_id: uuid.UUID) -> list[Drill]:
    """The running drills of one image, read in `conn`'s transaction (a deletion's)."""
    return drills_in(conn, sql.SQL("image_id = %s AND result = 'running'"), [image_id])


def drills_in(conn: psycopg.Connection, where: sql.Composable, params: list) -> list[Drill]:
    return (
        conn.cursor(row_factory=class_row(Drill))
        .execute(
            sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY started_at DESC, id").format(c=COLUMNS, t=TABLE, w=where),
            params,
        )
        .fetchall()
    )
