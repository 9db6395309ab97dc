"""toygres_cms.image_requests and restore_requests: what users asked for, claimed by the sensors."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

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


class RequestsTable(Queries):
    def create_image_request(
        self, fields: ImageRequestFields, request_id: uuid.UUID | str | None = None
    ) -> ImageRequest:
        """Queue an on-demand backup (state pending). Validation happens when a sensor claims it."""
        return self._insert(IMAGE_REQUEST, self._request_values(fields, request_id))

    def create_restore_request(
        self, fields: RestoreRequestFields, request_id: uuid.UUID | str | None = None, password: str | None = None
    ) -> RestoreRequest:
        """Queue a restore (state pending). source_image_id: an image id or name.

        `password` is accepted for compatibility and ignored (a restored instance keeps the
        source image's password): it is never stored.
        """
        if password is not None:
            warnings.warn("password is ignored for restores and stored nowhere", UserWarning, stacklevel=2)
        return self._insert(RESTORE_REQUEST, self._request_values(fields, request_id))

    @staticmethod
    def _request_values(fields: RequestFields, request_id: uuid.UUID | str | None) -> dict[str, Any]:
        return {
            "id": uuid.UUID(str(request_id)) if request_id else uuid.uuid4(),
            **fields.model_dump(),
            "state": RequestState.pending.value,
        }

    @contextmanager
    def _claim(self, kind: Table, limit: int) -> Iterator[ClaimedRequests]:
        with self.connection() as conn:
            rows = self._select(
                kind,
                sql.SQL("state = %s"),
                [RequestState.pending.value],
                order="created_at, id",
                limit=limit,
                conn=conn,
                lock="FOR UPDATE SKIP LOCKED",
            )
            yield ClaimedRequests(rows, self, conn, kind)

    def claim_pending_image_requests(self, limit: int = 50) -> Any:
        """`with cms.claim_pending_image_requests() as claim:` — pending rows locked FOR UPDATE
        SKIP LOCKED in one transaction; settle each with claim.accept(row, run_id) or
        claim.reject(row, reason); commits when the block exits."""
        return self._claim(IMAGE_REQUEST, limit)

    def claim_pending_restore_requests(self, limit: int = 50) -> Any:
        """Like claim_pending_image_requests, for restore requests (accept may set instance_id)."""
        return self._claim(RESTORE_REQUEST, limit)

    def transition_image_request(
        self,
        request_id: uuid.UUID | str,
        to_state: RequestState | str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        expected: RequestState | Iterable[RequestState] | None = None,
    ) -> ImageRequest:
        return self._transition_own(
            IMAGE_REQUEST, request_id, to_state, reason=reason, run_id=run_id, fields={}, expected=expected
        )

    def transition_restore_request(
        self,
        request_id: uuid.UUID | str,
        to_state: RequestState | str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        instance_id: uuid.UUID | str | None = None,
        expected: RequestState | Iterable[RequestState] | None = None,
    ) -> RestoreRequest:
        fields = {"instance_id": uuid.UUID(str(instance_id))} if instance_id else {}
        return self._transition_own(
            RESTORE_REQUEST,
            request_id,
            to_state,
            reason=reason,
            run_id=run_id,
            fields=fields,
            expected=expected,
        )

    def attach_request_run(self, request_id: uuid.UUID | str, run_id: str) -> ImageRequest | RestoreRequest:
        """Record the run of an accepted request (when the run id was not known at accept time)."""
        parsed = parse_uuid(str(request_id))
        if parsed is not None:
            with self.connection() as conn:
                for kind in (IMAGE_REQUEST, RESTORE_REQUEST):
                    row = (
                        conn.cursor(row_factory=model_row(kind.model))
                        .execute(
                            sql.SQL(
                                "UPDATE {table} SET run_id = %s, updated_at = now() WHERE id = %s RETURNING {columns}"
                            ).format(table=kind.table_id, columns=kind.columns),
                            [run_id, parsed],
                        )
                        .fetchone()
                    )
                    if row is not None:
                        return row
        raise RequestNotFound(request_id)

    def get_image_request(self, request_id: uuid.UUID | str) -> ImageRequest | None:
        return self._get(IMAGE_REQUEST, request_id)

    def get_restore_request(self, request_id: uuid.UUID | str) -> RestoreRequest | None:
        return self._get(RESTORE_REQUEST, request_id)

    def find_request_by_run(self, run_id: str) -> ImageRequest | RestoreRequest | None:
        return self._by_run(IMAGE_REQUEST, run_id) or self._by_run(RESTORE_REQUEST, run_id)

    def list_image_requests(self, states: Iterable[RequestState] | None = None) -> list[ImageRequest]:
        return self._list(IMAGE_REQUEST, states)

    def list_restore_requests(self, states: Iterable[RequestState] | None = None) -> list[RestoreRequest]:
        return self._list(RESTORE_REQUEST, states)

    def _unlaunched(self, kind: Table, limit: int) -> list[tuple[Any, float]]:
        """Accepted rows with no run recorded, each with its age since accepted (by the database's clock)."""
        query = sql.SQL(
            "SELECT {columns}, extract(epoch FROM now() - updated_at)::float8 AS age FROM {table}"
            " WHERE state = %s AND run_id IS NULL ORDER BY updated_at, id LIMIT %s"
        ).format(columns=kind.columns, table=kind.table_id)
        with self.connection() as conn:
            rows = conn.execute(query, [RequestState.accepted.value, limit]).fetchall()
        names = list(kind.model.model_fields)
        read = [(request_row(kind.model, dict(zip(names, row[:-1], strict=True))), float(row[-1])) for row in rows]
        # a malformed row is never launched (nor relaunched)
        return [(request, age) for request, age in read if not isinstance(request, MalformedRequest)]

    def list_unlaunched_image_requests(self, limit: int = 100) -> list[tuple[ImageRequest, float]]:
        """Accepted image requests with no run recorded yet, each with its age in seconds since
        it was accepted (measured by the database's clock), oldest first."""
        return self._unlaunched(IMAGE_REQUEST, limit)

    def list_unlaunched_restore_requests(self, limit: int = 100) -> list[tuple[RestoreRequest, float]]:
        """Like list_unlaunched_image_requests, for restore requests."""
        return self._unlaunched(RESTORE_REQUEST, limit)
