"""toygres_cms.image_requests and restore_requests: what users asked for, claimed by the sensors."""

from __future__ import annotations

import builtins
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from records import (
    ImageRequest,
    ImageRequestFields,
    RequestState,
    RestoreRequest,
    RestoreRequestFields,
    parse_uuid,
)
from records.requests import MalformedRequest, RequestFields, request_row
from resources.cms.claims import ClaimedRequests
from resources.cms.errors import RequestNotFound
from resources.cms.queries import Queries, model_row
from resources.cms.tables import (
    IMAGE_REQUEST,
    RESTORE_REQUEST,
    Table,
)

# The kind of a request is its record: ImageRequest or RestoreRequest.
RequestT = TypeVar("RequestT", ImageRequest, RestoreRequest)
# The channel every insert of requests notifies (migration 013), its payload the kind alone.
REQUEST_CHANNEL = "toygres_requests"
NOTIFIED_KINDS: dict[str, type] = {"image": ImageRequest, "restore": RestoreRequest}
# First key of the launch locks' pg_advisory_lock(int4, int4) ("tgln"); the second is the request id's hash.
LAUNCH_LOCK_KEY = 0x74676C6E
TABLES: dict[type, Table] = {ImageRequest: IMAGE_REQUEST, RestoreRequest: RESTORE_REQUEST}
FIELDS: dict[type[RequestFields], Table] = {ImageRequestFields: IMAGE_REQUEST, RestoreRequestFields: RESTORE_REQUEST}


def table_of(kind: type) -> Table:
    """The table of a kind of request (ImageRequest or RestoreRequest)."""
    table = TABLES.get(kind)
    if table is None:
        raise TypeError(f"a request kind is ImageRequest or RestoreRequest, not {kind!r}")
    return table


class RequestsTable(Queries):
    """cms.requests: both kinds of request, each method told the kind (ImageRequest or RestoreRequest)."""

    def create(
        self,
        fields: ImageRequestFields | RestoreRequestFields,
        request_id: uuid.UUID | str | None = None,
        password: str | None = None,
    ) -> Any:
        """Queue a request (state pending) of the kind its fields declare: ImageRequestFields (an
        on-demand backup) or RestoreRequestFields (source_image_id: an image id or name). Validation
        happens when a sensor claims it.

        `password` is accepted for compatibility and ignored (a restored instance keeps the
        source image's password): it is never stored.
        """
        table = next((t for model, t in FIELDS.items() if isinstance(fields, model)), None)
        if table is None:
            raise TypeError(f"a request is ImageRequestFields or RestoreRequestFields, not {type(fields).__name__}")
        if password is not None:
            warnings.warn("password is ignored for restores and stored nowhere", UserWarning, stacklevel=2)
        return self._insert(table, self._request_values(fields, request_id))

    @staticmethod
    def _request_values(fields: RequestFields, request_id: uuid.UUID | str | None) -> dict[str, Any]:
        return {
            "id": uuid.UUID(str(request_id)) if request_id else uuid.uuid4(),
            **fields.model_dump(),
            "state": RequestState.pending.value,
        }

    @contextmanager
    def claim(self, kind: type[RequestT], limit: int = 50) -> Iterator[ClaimedRequests[RequestT]]:
        """`with cms.requests.claim(ImageRequest) as claim:` — pending rows of that kind locked FOR
        UPDATE SKIP LOCKED in one transaction; settle each with claim.accept(row, run_id) (a restore
        request's may set instance_id) or claim.reject(row, reason); commits when the block exits."""
        table = table_of(kind)
        with self.connection() as conn:
            rows = self._select(
                table,
                sql.SQL("state = %s"),
                [RequestState.pending.value],
                order="created_at, id",
                limit=limit,
                conn=conn,
                lock="FOR UPDATE SKIP LOCKED",
            )
            yield ClaimedRequests(rows, self, conn, table)

    def listen(self) -> psycopg.Connection:
        """A connection of its own (the caller closes it) LISTENing on REQUEST_CHANNEL: each committed
        statement that inserts requests sends one notification, its payload the kind
        (NOTIFIED_KINDS), never a value of a row; read them with `conn.notifies(timeout=...)`."""
        conn = self.autocommit_connection()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(REQUEST_CHANNEL)))
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def launch_lock(self, request_id: str, timeout_seconds: float = 30) -> Iterator[None]:
        """`with cms.requests.launch_lock(id):` one launch of this request at a time (the run
        coordinator's check-then-queue), whoever launches it: an advisory lock of a session of its
        own, so it needs no write grant and ends with the block. Releasing it is closing that
        session, which never raises: a session the CMS lost inside the block (a restart) has
        released the lock already, and what the block did stands."""
        conn = self.autocommit_connection()
        try:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout_seconds * 1000)}ms")))
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LAUNCH_LOCK_KEY, request_id))
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            conn.close()

    def transition(
        self,
        kind: type[RequestT],
        request_id: uuid.UUID | str,
        to_state: RequestState | str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        instance_id: uuid.UUID | str | None = None,
        expected: RequestState | Iterable[RequestState] | None = None,
    ) -> RequestT:
        """Move a request per REQUEST_TRANSITIONS; `instance_id` only for a RestoreRequest."""
        fields = {"instance_id": uuid.UUID(str(instance_id))} if instance_id else {}
        return self._transition_own(
            table_of(kind), request_id, to_state, reason=reason, run_id=run_id, fields=fields, expected=expected
        )

    def attach_run(self, request_id: uuid.UUID | str, run_id: str) -> ImageRequest | RestoreRequest:
        """Record the run of an accepted request of either kind (when the run id was not known at accept time)."""
        parsed = parse_uuid(str(request_id))
        if parsed is not None:
            with self.connection() as conn:
                for table in (IMAGE_REQUEST, RESTORE_REQUEST):
                    row = (
                        conn.cursor(row_factory=model_row(table.model))
                        .execute(
                            sql.SQL(
                                "UPDATE {table} SET run_id = %s, updated_at = now() WHERE id = %s RETURNING {columns}"
                            ).format(table=table.table_id, columns=table.columns),
                            [run_id, parsed],
                        )
                        .fetchone()
                    )
                    if row is not None:
                        return row
        raise RequestNotFound(request_id)

    def get(self, kind: type[RequestT], request_id: uuid.UUID | str) -> RequestT | None:
        return self._get(table_of(kind), request_id)

    def find_by_run(self, run_id: str) -> ImageRequest | RestoreRequest | None:
        """The request (of either kind) a run last acted on."""
        return self._by_run(IMAGE_REQUEST, run_id) or self._by_run(RESTORE_REQUEST, run_id)

    def list(self, kind: type[RequestT], states: Iterable[RequestState] | None = None) -> builtins.list[RequestT]:
        return self._list(table_of(kind), states)

    def unlaunched(self, kind: type[RequestT], limit: int = 100) -> builtins.list[tuple[RequestT, float]]:
        """Accepted requests of this kind with no run recorded yet, each with its age in seconds
        since it was accepted (measured by the database's clock), oldest first."""
        table = table_of(kind)
        query = sql.SQL(
            "SELECT {columns}, extract(epoch FROM now() - updated_at)::float8 AS age FROM {table}"
            " WHERE state = %s AND run_id IS NULL ORDER BY updated_at, id LIMIT %s"
        ).format(columns=table.columns, table=table.table_id)
        with self.connection() as conn:
            rows = conn.execute(query, [RequestState.accepted.value, limit]).fetchall()
        names = list(table.model.model_fields)
        read: builtins.list[tuple[Any, float]] = [
            (request_row(table.model, dict(zip(names, row[:-1], strict=True))), float(row[-1])) for row in rows
        ]
        # a malformed row is never launched (nor relaunched)
        return [(request, age) for request, age in read if not isinstance(request, MalformedRequest)]
