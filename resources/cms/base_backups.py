"""toygres_cms.base_backups: physical base backups for point-in-time recovery (records/wal.py)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable

from psycopg import sql
from psycopg.rows import class_row
from pydantic import SecretStr

from records import Instance, ValidationFailed
from records.wal import PITR_BASE_BACKUP_TAG, BaseBackup, BaseBackupResult, BaseBackupState
from resources.cms.errors import CMSError, PasswordUnavailable
from resources.cms.queries import Queries, fetch_one
from resources.cms.tables import SCHEMA

TABLE = sql.Identifier(SCHEMA, "base_backups")
INSTANCES = sql.Identifier(SCHEMA, "instances")
COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in BaseBackup.model_fields)
REASON_MAX = 4000


class BaseBackupsTable(Queries):
    """cms.base_backups"""

    def reserve(
        self, source: Instance, password: SecretStr, run_id: str | None, backup_id: uuid.UUID | None = None
    ) -> BaseBackup:
        backup_id = backup_id or uuid.uuid4()
        token = self.passwords().encrypt(password.get_secret_value())
        with self.connection() as conn:
            return fetch_one(
                conn.cursor(row_factory=class_row(BaseBackup)).execute(
                    sql.SQL(
                        "INSERT INTO {t} (id, instance_id, namespace, k8s_name, run_id, blob_path, postgres_version,"
                        " source_password_encrypted) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {c}"
                    ).format(t=TABLE, c=COLUMNS),
                    [
                        backup_id,
                        source.id,
                        source.namespace,
                        source.k8s_name,
                        run_id,
                        f"base/{backup_id}",
                        source.postgres_version,
                        token,
                    ],
                )  # fmt: skip
            )

    def finish(self, backup_id: uuid.UUID, result: BaseBackupResult) -> BaseBackup:
        with self.connection() as conn:
            return fetch_one(
                conn.cursor(row_factory=class_row(BaseBackup)).execute(
                    sql.SQL(
                        "UPDATE {t} SET state = 'ready', system_identifier = %s, timeline = %s, start_segment = %s,"
                        " consistent_at = %s, size_bytes = %s, sha256 = %s, encryption_recipient = %s,"
                        " updated_at = now() WHERE id = %s AND state = 'creating' RETURNING {c}"
                    ).format(t=TABLE, c=COLUMNS),
                    [
                        result.system_identifier,
                        result.timeline,
                        result.start_segment,
                        result.consistent_at,
                        result.size_bytes,
                        result.sha256,
                        result.encryption_recipient,
                        backup_id,
                    ],
                )  # fmt: skip
            )

    def settle(self, backup_id: uuid.UUID, state: BaseBackupState, reason: str) -> None:
        """creating -> failed, or ready/failed -> deleted (retention)."""
        allowed = {BaseBackupState.failed: ["creating"], BaseBackupState.deleted: ["ready", "failed"]}.get(state)
        if allowed is None:
            raise CMSError(f"a base backup is settled as failed or deleted, not {state}")
        with self.connection() as conn:
            conn.execute(
                sql.SQL("UPDATE {t} SET state = %s, reason = %s, updated_at = now() WHERE id = %s AND state = ANY(%s)")
                .format(t=TABLE),
                [state.value, reason[:REASON_MAX], backup_id, allowed],
            )  # fmt: skip

    def hold(self, instance_id: uuid.UUID, backup_id: uuid.UUID) -> None:
        """A point-in-time restore holds its base backup: its instance row is `creating` and tagged
        with the base backup (created before this call). The base backup row is share-locked here: a
        retention deleting it (expire, FOR UPDATE) either committed first, and the
        restore is refused here before it reads a blob, or waits and then sees this instance."""
        with self.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT state FROM {t} WHERE id = %s FOR SHARE").format(t=TABLE), [backup_id]
            ).fetchone()
            if row is None or row[0] != BaseBackupState.ready.value:
                raise ValidationFailed(
                    "target_time", f"base backup {backup_id} is {row[0] if row else 'gone'}, plan the restore again"
                )
            held = conn.execute(
                sql.SQL("SELECT 1 FROM {i} WHERE id = %s AND state = 'creating' AND tags ->> %s = %s").format(
                    i=INSTANCES
                ),
                [instance_id, PITR_BASE_BACKUP_TAG, str(backup_id)],
            ).fetchone()
            if held is None:
                raise CMSError(f"instance {instance_id} is not a creating restore of base backup {backup_id}")

    def expire(self, backup_id: uuid.UUID, reason: str) -> builtins.list[str]:
        """Retention: ready -> deleted under the row's lock, unless a running point-in-time restore
        holds it (hold). Returns the holders' k8s names: empty when it was marked deleted
        (or already was), else nothing changed."""
        with self.connection() as conn:
            conn.execute(sql.SQL("SELECT 1 FROM {t} WHERE id = %s FOR UPDATE").format(t=TABLE), [backup_id])
            holders = [
                row[0]
                for row in conn.execute(
                    sql.SQL("SELECT k8s_name FROM {i} WHERE state = 'creating' AND tags ->> %s = %s").format(
                        i=INSTANCES
                    ),
                    [PITR_BASE_BACKUP_TAG, str(backup_id)],
                )
            ]
            if holders:
                return holders
            conn.execute(
                sql.SQL("UPDATE {t} SET state = 'deleted', reason = %s, updated_at = now()"
                        " WHERE id = %s AND state = ANY(%s)").format(t=TABLE),
                [reason[:REASON_MAX], backup_id, ["ready", "failed"]],
            )  # fmt: skip
            return []

    def list(
        self, instance_id: uuid.UUID | None = None, states: Iterable[BaseBackupState] = (BaseBackupState.ready,)
    ) -> builtins.list[BaseBackup]:
        """Oldest consistent first."""
        with self.connection() as conn:
            return (
                conn.cursor(row_factory=class_row(BaseBackup))
                .execute(
                    sql.SQL(
                        "SELECT {c} FROM {t} WHERE state = ANY(%s) AND (%s::uuid IS NULL OR instance_id = %s)"
                        " ORDER BY consistent_at NULLS LAST, created_at"
                    ).format(t=TABLE, c=COLUMNS),
                    [[s.value for s in states], instance_id, instance_id],
                )
                .fetchall()
            )

    def get(self, backup_id: str) -> BaseBackup | None:
        try:
            parsed = uuid.UUID(str(backup_id))
        except ValueError:
            return None
        with self.connection() as conn:
            return (
                conn.cursor(row_factory=class_row(BaseBackup))
                .execute(sql.SQL("SELECT {c} FROM {t} WHERE id = %s").format(t=TABLE, c=COLUMNS), [parsed])
                .fetchone()
            )

    def password(self, backup_id: uuid.UUID) -> SecretStr:
        with self.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT source_password_encrypted FROM {t} WHERE id = %s").format(t=TABLE), [backup_id]
            ).fetchone()
        if row is None or row[0] is None:
            raise PasswordUnavailable(f"base backup {backup_id} has no stored password")
        return SecretStr(self.passwords().decrypt(row[0]))
