"""The one query helper every table repository uses: insert, select, transition (with its event)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from records import ImageState, parse_uuid
from records.requests import is_request_model, request_row
from resources.cms.encryption import PasswordBox
from resources.cms.errors import CMSError, InvalidTransition
from resources.cms.tables import IMAGE, SCHEMA, Table, conflict, state_values


def model_row(model: type) -> Any:
    """psycopg row factory: rows as `model`; a request row that breaks its record's rules comes
    back as a MalformedRequest instead of stopping every reader of the table."""
    if not is_request_model(model):
        return class_row(model)

    def factory(cursor: Any) -> Callable[[Sequence[Any]], Any]:
        names = [column.name for column in cursor.description or []]
        return lambda values: request_row(model, dict(zip(names, values, strict=True)))

    return factory


def fetch_one(cursor: psycopg.Cursor[Any]) -> Any:
    """The one row a statement must return (INSERT/UPDATE ... RETURNING, SELECT EXISTS ...)."""
    row = cursor.fetchone()
    if row is None:
        raise CMSError("the statement returned no row")
    return row


class Database(Protocol):
    """What a repository needs of the resource: its connections and its password box."""

    def connection(self) -> AbstractContextManager[psycopg.Connection]: ...

    def autocommit_connection(self) -> psycopg.Connection: ...

    def passwords(self) -> PasswordBox: ...


class Queries:
    """Generic SQL over a `Table`; every repository is one of these over the resource's connections."""

    def __init__(self, db: Database):
        self._db = db

    def connection(self) -> AbstractContextManager[psycopg.Connection]:
        """A new connection in a transaction (the resource's)."""
        return self._db.connection()

    def autocommit_connection(self) -> psycopg.Connection:
        return self._db.autocommit_connection()

    def passwords(self) -> PasswordBox:
        return self._db.passwords()

    @staticmethod
    def _record_event(
        conn: psycopg.Connection,
        kind: Table,
        entity_id: uuid.UUID,
        from_state: str | None,
        to_state: str,
        reason: str | None,
        run_id: str | None,
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (entity_type, entity_id, from_state, to_state, reason, run_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(SCHEMA, "events")),
            (kind.entity_type, entity_id, from_state, to_state, reason, run_id),
        )

    def _insert(
        self,
        kind: Table,
        values: dict[str, Any],
        reason: str | None = "created",
        first: Callable[[psycopg.Connection], None] | None = None,
    ) -> Any:
        """INSERT a row and its creation event in one transaction; the row comes back as a model.
        `first` runs in that transaction before the INSERT (a check under a lock)."""
        query = sql.SQL("INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING {returning}").format(
            table=kind.table_id,
            columns=sql.SQL(", ").join(sql.Identifier(name) for name in values),
            values=sql.SQL(", ").join(sql.Placeholder() for _ in values),
            returning=kind.columns,
        )
        try:
            with self.connection() as conn:
                if first is not None:
                    first(conn)
                row = fetch_one(conn.cursor(row_factory=model_row(kind.model)).execute(query, list(values.values())))
                self._record_event(conn, kind, row.id, None, row.state.value, reason, row.run_id)
        except psycopg.errors.UniqueViolation as error:
            aliases = {"instance_id": values.get("id"), "image_id": values.get("id"), "request_id": values.get("id")}
            raise conflict(error, {**values, **aliases}) from None
        return row

    def _select(
        self,
        kind: Table,
        where: sql.Composable | None = None,
        params: Iterable[Any] = (),
        order: str = "created_at, id",
        limit: int | None = None,
        conn: psycopg.Connection | None = None,
        lock: str | None = None,
        offset: int = 0,
    ) -> list[Any]:
        """SELECT rows as models. `order` and `lock` are constant SQL written in this module."""
        query = sql.SQL("SELECT {columns} FROM {table}").format(columns=kind.columns, table=kind.table_id)
        if where is not None:
            query += sql.SQL(" WHERE ") + where
        query += sql.SQL(" ORDER BY ") + sql.SQL(order)
        params = list(params)
        if limit is not None:
            query += sql.SQL(" LIMIT %s")
            params.append(limit)
        if offset:
            query += sql.SQL(" OFFSET %s")
            params.append(offset)
        if lock is not None:
            query += sql.SQL(" ") + sql.SQL(lock)
        if conn is not None:
            return conn.cursor(row_factory=model_row(kind.model)).execute(query, params).fetchall()
        with self.connection() as own:
            return own.cursor(row_factory=model_row(kind.model)).execute(query, params).fetchall()

    def _get(self, kind: Table, entity_id: Any) -> Any | None:
        parsed = entity_id if isinstance(entity_id, uuid.UUID) else parse_uuid(str(entity_id))
        if parsed is None:
            return None
        rows = self._select(kind, sql.SQL("id = %s"), [parsed])
        return rows[0] if rows else None

    def _list(self, kind: Table, states: Iterable[Any] | None) -> list[Any]:
        wanted = state_values(kind, states)
        if wanted is None:
            return self._select(kind)
        return self._select(kind, sql.SQL("state = ANY(%s)"), [wanted])

    def _page(self, kind: Table, states: Iterable[Any] | None, limit: int | None, offset: int) -> tuple[list[Any], int]:
        """One page of rows (in the stable order created_at, id) and how many rows there are in all."""
        wanted = state_values(kind, states)
        where, params = (None, []) if wanted is None else (sql.SQL("state = ANY(%s)"), [wanted])
        count = sql.SQL("SELECT count(*) FROM {}").format(kind.table_id)
        if where is not None:
            count += sql.SQL(" WHERE ") + where
        with self.connection() as conn:
            total = int(fetch_one(conn.execute(count, params))[0])
            rows = self._select(kind, where, params, limit=limit, offset=offset, conn=conn)
        return rows, total

    def _by_run(self, kind: Table, run_id: str) -> Any | None:
        """The row a run last acted on: the row's run_id, else the newest event of that run."""
        rows = self._select(kind, sql.SQL("run_id = %s"), [run_id], order="updated_at DESC, id", limit=1)
        if rows:
            return rows[0]
        rows = self._select(
            kind,
            sql.SQL(
                "id = (SELECT entity_id FROM {events} WHERE run_id = %s AND entity_type = %s ORDER BY id DESC LIMIT 1)"
            ).format(events=sql.Identifier(SCHEMA, "events")),
            [run_id, kind.entity_type],
        )
        return rows[0] if rows else None

    def _transition(
        self,
        conn: psycopg.Connection,
        kind: Table,
        entity_id: Any,
        to_state: Any,
        *,
        reason: str | None,
        run_id: str | None,
        fields: dict[str, Any],
        expected: Iterable[Any] | None = None,
    ) -> Any:
        """Move one row to `to_state` inside `conn`'s transaction, with its event."""
        unknown = set(fields) - kind.fields
        if unknown:
            raise TypeError(f"{kind.entity_type} transitions set only {sorted(kind.fields)}, not {sorted(unknown)}")
        try:
            target = kind.state_enum(to_state)
        except ValueError:
            raise InvalidTransition(kind.entity_type, entity_id, None, str(to_state), "unknown state") from None
        parsed = entity_id if isinstance(entity_id, uuid.UUID) else parse_uuid(str(entity_id))
        if parsed is None:
            raise kind.not_found(entity_id)
        row = conn.execute(
            sql.SQL("SELECT state FROM {} WHERE id = %s FOR UPDATE").format(kind.table_id), [parsed]
        ).fetchone()
        if row is None:
            raise kind.not_found(entity_id)
        current = kind.state_enum(row[0])
        if expected is not None:
            allowed_from = {kind.state_enum(s) for s in ([expected] if isinstance(expected, str) else expected)}
            if current not in allowed_from:
                raise InvalidTransition(
                    kind.entity_type,
                    parsed,
                    current.value,
                    target.value,
                    f"expected the row in state {' or '.join(sorted(s.value for s in allowed_from))}",
                )
        if target not in kind.transitions[current]:
            allowed = sorted(s.value for s in kind.transitions[current]) or ["none (terminal state)"]
            raise InvalidTransition(
                kind.entity_type,
                parsed,
                current.value,
                target.value,
                f"allowed next states: {', '.join(allowed)}",
            )

        assignments: dict[str, sql.Composable] = {}
        params: list[Any] = []

        def assign(column: str, value: Any) -> None:
            assignments[column] = sql.Placeholder()
            params.append(value)

        assign("state", target.value)
        for column, value in fields.items():
            assign(column, value)
        if target.value == "failed" and "error_message" in kind.fields and "error_message" not in fields:
            assign("error_message", reason)
        if kind.entity_type.endswith("_request") and reason is not None:
            assign("reason", reason)
        if kind is IMAGE and target is ImageState.ready:
            assignments["ready_at"] = sql.SQL("now()")
        if kind is IMAGE and target is ImageState.deleted:
            assignments["deleted_at"] = sql.SQL("now()")
        if run_id is not None:
            assign("run_id", run_id)
        assignments["updated_at"] = sql.SQL("now()")

        query = sql.SQL("UPDATE {table} SET {sets} WHERE id = %s RETURNING {columns}").format(
            table=kind.table_id,
            sets=sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(column), value) for column, value in assignments.items()
            ),
            columns=kind.columns,
        )
        try:
            with conn.transaction():  # a savepoint: a conflict leaves the outer transaction usable
                updated = fetch_one(conn.cursor(row_factory=model_row(kind.model)).execute(query, [*params, parsed]))
                self._record_event(conn, kind, parsed, current.value, target.value, reason, run_id or updated.run_id)
        except psycopg.errors.UniqueViolation as error:
            current_row = self._select(kind, sql.SQL("id = %s"), [parsed], conn=conn)[0]
            raise conflict(error, current_row.model_dump()) from None
        return updated

    def _transition_own(self, kind: Table, entity_id: Any, to_state: Any, **kwargs: Any) -> Any:
        with self.connection() as conn:
            return self._transition(conn, kind, entity_id, to_state, **kwargs)
