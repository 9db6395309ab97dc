"""A claim of pending requests: locked in one transaction, each settled once."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import psycopg
from psycopg import sql

from records import RequestState
from resources.cms.errors import CMSError
from resources.cms.tables import Table

if TYPE_CHECKING:
    from resources.cms.queries import Queries

RecordT = TypeVar("RecordT")
# First key of the claims' pg_advisory_xact_lock(int4, int4) ("tgcl"); the second is the table's.
CLAIM_LOCK_KEY = 0x7467636C


class ClaimedRequests(list, Generic[RecordT]):
    """The pending requests locked by one claim (a list), and how to settle each of them.

    Everything happens in the claim's single transaction, which commits when the `with` block
    exits normally and rolls back (the rows stay pending) when it raises. Rows locked by
    another open claim are skipped, so two claims never see the same request; claims that
    call `already_accepted()` take turns from there on, so their duplicate checks agree.
    """

    def __init__(self, rows: list[RecordT], cms: Queries, conn: psycopg.Connection, kind: Table):
        super().__init__(rows)
        self._cms = cms
        self._conn = conn
        self._kind = kind
        self.settled: dict[uuid.UUID, RecordT] = {}

    def _id(self, request: Any) -> uuid.UUID:
        request_id = getattr(request, "id", request)
        request_id = request_id if isinstance(request_id, uuid.UUID) else uuid.UUID(str(request_id))
        if request_id not in {row.id for row in self}:
            raise CMSError(f"request {request_id} is not part of this claim")
        return request_id

    def accept(self, request: Any, run_id: str | None = None, **fields: Any) -> RecordT:
        """pending -> accepted, recording the run launched for it (when known)."""
        request_id = self._id(request)
        row = self._cms._transition(
            self._conn,
            self._kind,
            request_id,
            RequestState.accepted,
            reason=None,
            run_id=run_id,
            fields=fields,
            expected=[RequestState.pending],
        )
        self.settled[request_id] = row
        return row

    def reject(self, request: Any, reason: str) -> RecordT:
        """pending -> rejected with the reason (validation failed)."""
        request_id = self._id(request)
        row = self._cms._transition(
            self._conn,
            self._kind,
            request_id,
            RequestState.rejected,
            reason=reason,
            run_id=None,
            fields={},
            expected=[RequestState.pending],
        )
        self.settled[request_id] = row
        return row

    def already_accepted(self) -> list[RecordT]:
        """Every accepted request of this kind, for duplicate checks.

        From here to the end of the claim, claims of this kind take turns (a transaction-scoped
        advisory lock): this read waits until an overlapping claim has committed, so it sees
        every request accepted before, and no other claim accepts anything until this one ends.
        """
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CLAIM_LOCK_KEY, self._kind.table))
        return self._cms._select(self._kind, sql.SQL("state = %s"), [RequestState.accepted.value], conn=self._conn)
