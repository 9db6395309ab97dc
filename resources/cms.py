"""The CMS: the control plane's PostgreSQL database (schema `toygres_cms`). All SQL lives here.

Rows cross the boundary as the pydantic records of `toygres_pipelines.models`. Every state
change (the creation of a row included) is written to `toygres_cms.events` in the same
transaction as the change, and every transition is checked against the models' transition
tables while the row is locked (`SELECT ... FOR UPDATE`).

Each call opens a short connection (psycopg 3, `connect_timeout`), so one resource can be used
from many threads at once. Versioned migrations live in `migrations/NNN_name.sql` beside this
file; `migrate()` applies the missing ones under an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import dagster as dg
import psycopg
from cryptography.fernet import Fernet, InvalidToken
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from pydantic import Field, SecretStr

from toygres_pipelines.models import (
    IMAGE_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    K8S_NAME_MAX,
    REQUEST_TRANSITIONS,
    Event,
    Image,
    ImageRequest,
    ImageState,
    ImageType,
    Instance,
    InstanceState,
    RequestState,
    RestoreRequest,
    ValidationFailed,
    parse_uuid,
    validate_dns_label,
    validate_image_name,
)

SCHEMA = "toygres_cms"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock key for migrations ("toygres" in ASCII); advisory locks are per database.
MIGRATION_LOCK_KEY = 0x746F7967726573
# First key of the claims' pg_advisory_xact_lock(int4, int4) ("tgcl"); the second is the table's.
CLAIM_LOCK_KEY = 0x7467636C


# --------------------------------------------------------------------------------------------
# Errors


class CMSError(RuntimeError):
    """Base class of the CMS resource's own errors (bad input raises ValidationFailed)."""


class NameConflict(ValidationFailed):
    """A unique rule refused a row: `field` names the column, `rule` says which rule."""


class InvalidTransition(CMSError):
    def __init__(self, entity_type: str, entity_id: Any, from_state: str | None, to_state: str, why: str):
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"{entity_type} {entity_id}: cannot go from {from_state} to {to_state}: {why}")


class NotFound(CMSError, LookupError):
    entity_type = "row"

    def __init__(self, ref: Any):
        self.ref = ref
        super().__init__(f"{self.entity_type} {ref} not found in the CMS")


class InstanceNotFound(NotFound):
    entity_type = "instance"


class ImageNotFound(NotFound):
    entity_type = "image"


class RequestNotFound(NotFound):
    entity_type = "request"


class PasswordUnavailable(CMSError):
    """An image's stored password is missing or cannot be decrypted with the configured key."""


class EncryptionKeyInvalid(CMSError):
    """encryption_key is not a Fernet key."""


class MigrationError(CMSError):
    pass


# --------------------------------------------------------------------------------------------
# Table descriptions shared by the generic code


RecordT = TypeVar("RecordT")


@dataclass(frozen=True)
class _Kind:
    entity_type: str
    table: str
    model: type
    state_enum: type
    transitions: dict
    fields: frozenset[str]
    not_found: type[NotFound]

    @property
    def table_id(self) -> sql.Composed:
        return sql.Identifier(SCHEMA, self.table)

    @property
    def columns(self) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(name) for name in self.model.model_fields)


INSTANCE = _Kind(
    "instance", "instances", Instance, InstanceState, INSTANCE_TRANSITIONS,
    frozenset({"ip_connection_string", "dns_connection_string", "external_ip", "error_message"}),
    InstanceNotFound,
)
IMAGE = _Kind(
    "image", "images", Image, ImageState, IMAGE_TRANSITIONS,
    frozenset({"backup_size_bytes", "backup_checksum", "error_message"}),
    ImageNotFound,
)
IMAGE_REQUEST = _Kind(
    "image_request", "image_requests", ImageRequest, RequestState, REQUEST_TRANSITIONS,
    frozenset(), RequestNotFound,
)
RESTORE_REQUEST = _Kind(
    "restore_request", "restore_requests", RestoreRequest, RequestState, REQUEST_TRANSITIONS,
    frozenset({"instance_id"}), RequestNotFound,
)

# Unique constraints / indexes -> (field, rule) for NameConflict.
_CONFLICTS: dict[str, tuple[str, str]] = {
    "instances_pkey": ("instance_id", "an instance with this id already exists"),
    "instances_k8s_name_key": ("k8s_name", "must be unique among all instances"),
    "instances_dns_name_active_key": (
        "dns_name", "is already used by another instance in state creating or running",
    ),
    "images_pkey": ("image_id", "an image with this id already exists"),
    "images_name_active_key": (
        "name", "is already used by another image that is not failed or deleted",
    ),
    "image_requests_pkey": ("request_id", "a request with this id already exists"),
    "restore_requests_pkey": ("request_id", "a request with this id already exists"),
}


def _conflict(error: psycopg.errors.UniqueViolation, values: dict[str, Any]) -> NameConflict:
    constraint = error.diag.constraint_name or ""
    field, rule = _CONFLICTS.get(constraint, (constraint or "unique", str(error).strip()))
    value = values.get(field)
    return NameConflict(field, f"{value!r} {rule}" if value is not None else rule)


def _states(kind: _Kind, states: Iterable[Any] | None) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    return [kind.state_enum(s).value for s in states]


# --------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        found.append(Migration(version=match.group(1), name=match.group(2), path=path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}: {versions}")
    return found


# --------------------------------------------------------------------------------------------
# Claims


class ClaimedRequests(list, Generic[RecordT]):
    """The pending requests locked by one claim (a list), and how to settle each of them.

    Everything happens in the claim's single transaction, which commits when the `with` block
    exits normally and rolls back (the rows stay pending) when it raises. Rows locked by
    another open claim are skipped, so two claims never see the same request; claims that
    call `already_accepted()` take turns from there on, so their duplicate checks agree.
    """

    def __init__(self, rows: list[RecordT], cms: CMSResource, conn: psycopg.Connection, kind: _Kind):
        super().__init__(rows)
        self._cms = cms
        self._conn = conn
        self._kind = kind
        self.settled: dict[uuid.UUID, RecordT] = {}

    def _id(self, request: Any) -> uuid.UUID:
        request_id = getattr(request, "id", request)
        request_id = request_id if isinstance(request_id, uuid.UUID) else uuid.UUID(str(request_id))
        if request_id not in {row.id for row in self}:  # type: ignore[attr-defined]
            raise CMSError(f"request {request_id} is not part of this claim")
        return request_id

    def accept(self, request: Any, run_id: str | None = None, **fields: Any) -> RecordT:
        """pending -> accepted, recording the run launched for it (when known)."""
        request_id = self._id(request)
        row = self._cms._transition(
            self._conn, self._kind, request_id, RequestState.accepted,
            reason=None, run_id=run_id, fields=fields, expected=[RequestState.pending],
        )
        self.settled[request_id] = row
        return row

    def reject(self, request: Any, reason: str) -> RecordT:
        """pending -> rejected with the reason (validation failed)."""
        request_id = self._id(request)
        row = self._cms._transition(
            self._conn, self._kind, request_id, RequestState.rejected,
            reason=reason, run_id=None, fields={}, expected=[RequestState.pending],
        )
        self.settled[request_id] = row
        return row

    accepted = accept
    rejected = reject

    def already_accepted(self) -> list[RecordT]:
        """Every accepted request of this kind, for duplicate checks.

        From here to the end of the claim, claims of this kind take turns (a transaction-scoped
        advisory lock): this read waits until an overlapping claim has committed, so it sees
        every request accepted before, and no other claim accepts anything until this one ends.
        """
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CLAIM_LOCK_KEY, self._kind.table))
        return self._cms._select(self._kind, sql.SQL("state = %s"), [RequestState.accepted.value], conn=self._conn)


# --------------------------------------------------------------------------------------------
# The resource


class CMSResource(dg.ConfigurableResource):
    """The toygres CMS (PostgreSQL, schema toygres_cms): instances, images, events, requests."""

    dsn: str = Field(description="libpq connection string of the CMS database (TOYGRES_CMS_DSN)")
    encryption_key: str = Field(
        description="Fernet key encrypting stored passwords (TOYGRES_ENCRYPTION_KEY); see generate_key()"
    )
    connect_timeout: int = Field(default=10, description="Seconds to wait for a CMS connection")

    # ---- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A new connection in a transaction: commits when the block ends, rolls back on error."""
        conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=False)
        try:
            with conn:  # commit on success, rollback on exception, then close
                yield conn
        finally:
            if not conn.closed:
                conn.close()

    def _fernet(self) -> Fernet:
        try:
            return Fernet(self.encryption_key.encode())
        except (ValueError, TypeError) as error:
            raise EncryptionKeyInvalid(
                "encryption_key (TOYGRES_ENCRYPTION_KEY) is not a Fernet key: it must be 32 url-safe"
                " base64-encoded bytes, e.g. from CMSResource.generate_key()"
            ) from error

    def migrate(self) -> list[str]:
        """Apply the missing migrations, in order; returns the versions applied by this call.

        Safe to run concurrently from several processes: a session advisory lock serializes
        them, and each migration commits together with its schema_migrations row.
        """
        available = migrations()
        applied_now: list[str] = []
        with psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '120s'")
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} ("
                            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                            " applied_at timestamptz NOT NULL DEFAULT now())"
                        ).format(sql.Identifier(SCHEMA, "schema_migrations"))
                    )
                done = {
                    version: checksum
                    for version, checksum in conn.execute(
                        sql.SQL("SELECT version, checksum FROM {}").format(
                            sql.Identifier(SCHEMA, "schema_migrations")
                        )
                    ).fetchall()
                }
                for migration in available:
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            raise MigrationError(
                                f"migration {migration.path.name} changed after it was applied;"
                                " add a new migration instead of editing an applied one"
                            )
                        continue
                    with conn.transaction():
                        conn.execute(migration.text)  # no parameters: several statements allowed
                        conn.execute(
                            sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                                sql.Identifier(SCHEMA, "schema_migrations")
                            ),
                            (migration.version, migration.name, migration.checksum),
                        )
                    applied_now.append(migration.version)
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        return applied_now

    def applied_migrations(self) -> list[str]:
        with self.connection() as conn:
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",)
            ).fetchone()[0]
            if not exists:
                return []
            rows = conn.execute(
                sql.SQL("SELECT version FROM {} ORDER BY version").format(
                    sql.Identifier(SCHEMA, "schema_migrations")
                )
            ).fetchall()
        return [row[0] for row in rows]

    # ---- generic helpers --------------------------------------------------------------------

    @staticmethod
    def _record_event(
        conn: psycopg.Connection, kind: _Kind, entity_id: uuid.UUID, from_state: str | None,
        to_state: str, reason: str | None, run_id: str | None,
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (entity_type, entity_id, from_state, to_state, reason, run_id)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(SCHEMA, "events")),
            (kind.entity_type, entity_id, from_state, to_state, reason, run_id),
        )

    def _insert(self, kind: _Kind, values: dict[str, Any], reason: str | None = "created") -> Any:
        """INSERT a row and its creation event in one transaction; the row comes back as a model."""
        query = sql.SQL("INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING {returning}").format(
            table=kind.table_id,
            columns=sql.SQL(", ").join(sql.Identifier(name) for name in values),
            values=sql.SQL(", ").join(sql.Placeholder() for _ in values),
            returning=kind.columns,
        )
        try:
            with self.connection() as conn:
                row = conn.cursor(row_factory=class_row(kind.model)).execute(
                    query, list(values.values())
                ).fetchone()
                self._record_event(conn, kind, row.id, None, row.state.value, reason, row.run_id)
        except psycopg.errors.UniqueViolation as error:
            aliases = {"instance_id": values.get("id"), "image_id": values.get("id"), "request_id": values.get("id")}
            raise _conflict(error, {**values, **aliases}) from None
        return row

    def _select(
        self, kind: _Kind, where: sql.Composable | None = None, params: Iterable[Any] = (),
        order: str = "created_at, id", limit: int | None = None,
        conn: psycopg.Connection | None = None, lock: str | None = None,
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
        if lock is not None:
            query += sql.SQL(" ") + sql.SQL(lock)
        if conn is not None:
            return conn.cursor(row_factory=class_row(kind.model)).execute(query, params).fetchall()
        with self.connection() as own:
            return own.cursor(row_factory=class_row(kind.model)).execute(query, params).fetchall()

    def _get(self, kind: _Kind, entity_id: Any) -> Any | None:
        parsed = entity_id if isinstance(entity_id, uuid.UUID) else parse_uuid(str(entity_id))
        if parsed is None:
            return None
        rows = self._select(kind, sql.SQL("id = %s"), [parsed])
        return rows[0] if rows else None

    def _list(self, kind: _Kind, states: Iterable[Any] | None) -> list[Any]:
        wanted = _states(kind, states)
        if wanted is None:
            return self._select(kind)
        return self._select(kind, sql.SQL("state = ANY(%s)"), [wanted])

    def _by_run(self, kind: _Kind, run_id: str) -> Any | None:
        """The row a run last acted on: the row's run_id, else the newest event of that run."""
        rows = self._select(kind, sql.SQL("run_id = %s"), [run_id], order="updated_at DESC, id", limit=1)
        if rows:
            return rows[0]
        rows = self._select(
            kind,
            sql.SQL(
                "id = (SELECT entity_id FROM {events} WHERE run_id = %s AND entity_type = %s"
                " ORDER BY id DESC LIMIT 1)"
            ).format(events=sql.Identifier(SCHEMA, "events")),
            [run_id, kind.entity_type],
        )
        return rows[0] if rows else None

    def _transition(
        self, conn: psycopg.Connection, kind: _Kind, entity_id: Any, to_state: Any, *,
        reason: str | None, run_id: str | None, fields: dict[str, Any],
        expected: Iterable[Any] | None = None,
    ) -> Any:
        """Move one row to `to_state` inside `conn`'s transaction, with its event."""
        unknown = set(fields) - kind.fields
        if unknown:
            raise TypeError(
                f"{kind.entity_type} transitions set only {sorted(kind.fields)}, not {sorted(unknown)}"
            )
        try:
            target = kind.state_enum(to_state)
        except ValueError:
            raise InvalidTransition(
                kind.entity_type, entity_id, None, str(to_state), "unknown state"
            ) from None
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
                    kind.entity_type, parsed, current.value, target.value,
                    f"expected the row in state {' or '.join(sorted(s.value for s in allowed_from))}",
                )
        if target not in kind.transitions[current]:
            allowed = sorted(s.value for s in kind.transitions[current]) or ["none (terminal state)"]
            raise InvalidTransition(
                kind.entity_type, parsed, current.value, target.value,
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
                updated = conn.cursor(row_factory=class_row(kind.model)).execute(
                    query, [*params, parsed]
                ).fetchone()
                self._record_event(
                    conn, kind, parsed, current.value, target.value, reason, run_id or updated.run_id
                )
        except psycopg.errors.UniqueViolation as error:
            current_row = self._select(kind, sql.SQL("id = %s"), [parsed], conn=conn)[0]
            raise _conflict(error, current_row.model_dump()) from None
        return updated

    def _transition_own(self, kind: _Kind, entity_id: Any, to_state: Any, **kwargs: Any) -> Any:
        with self.connection() as conn:
            return self._transition(conn, kind, entity_id, to_state, **kwargs)

    # ---- instances --------------------------------------------------------------------------

    def create_instance(
        self, *, user_name: str, k8s_name: str, namespace: str, postgres_version: str,
        storage_size_gb: int, use_load_balancer: bool, dns_name: str | None, image_type: ImageType | str,
        source_image_id: uuid.UUID | str | None = None, run_id: str | None = None,
        tags: dict[str, Any] | None = None, instance_id: uuid.UUID | str | None = None,
        state: InstanceState | str = InstanceState.creating,
    ) -> Instance:
        """Register an instance (state `creating` unless told); NameConflict on k8s_name/dns_name.

        The names reach manifests, paths and DNS: they are checked here too, whoever calls.
        """
        validate_dns_label(k8s_name, "k8s_name", max_length=K8S_NAME_MAX)
        validate_dns_label(namespace, "namespace")
        if dns_name is not None:
            validate_dns_label(dns_name, "dns_name")
        values = {
            "id": uuid.UUID(str(instance_id)) if instance_id else uuid.uuid4(),
            "user_name": user_name,
            "k8s_name": k8s_name,
            "namespace": namespace,
            "postgres_version": str(postgres_version),
            "storage_size_gb": storage_size_gb,
            "use_load_balancer": use_load_balancer,
            "dns_name": dns_name,
            "state": InstanceState(state).value,
            "image_type": ImageType(image_type).value,
            "source_image_id": uuid.UUID(str(source_image_id)) if source_image_id else None,
            "run_id": run_id,
            "tags": Jsonb(tags or {}),
        }
        return self._insert(INSTANCE, values)

    def get_instance(self, instance_id: uuid.UUID | str) -> Instance | None:
        return self._get(INSTANCE, instance_id)

    def find_instance(self, ref: str) -> Instance | None:
        """An instance by id (uuid string) or by k8s_name."""
        found = self._get(INSTANCE, ref)
        if found is not None:
            return found
        rows = self._select(INSTANCE, sql.SQL("k8s_name = %s"), [str(ref)])
        return rows[0] if rows else None

    def find_instance_by_run(self, run_id: str) -> Instance | None:
        return self._by_run(INSTANCE, run_id)

    def find_instances_by_tag(self, key: str, value: str) -> list[Instance]:
        """Instances whose tags map `key` to `value` (how a repeated request finds its instance)."""
        return self._select(INSTANCE, sql.SQL("tags ->> %s = %s"), [key, value])

    def list_instances(self, states: Iterable[InstanceState] | None = None) -> list[Instance]:
        return self._list(INSTANCE, states)

    def dns_name_in_use(self, dns_name: str) -> bool:
        with self.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE dns_name = %s AND state = ANY(%s))").format(
                    INSTANCE.table_id
                ),
                [dns_name, [InstanceState.creating.value, InstanceState.running.value]],
            ).fetchone()
        return bool(row[0])

    def transition_instance(
        self, instance_id: uuid.UUID | str, to_state: InstanceState | str, *, reason: str | None = None,
        run_id: str | None = None, expected: InstanceState | Iterable[InstanceState] | None = None,
        **fields: Any,
    ) -> Instance:
        """Move an instance per INSTANCE_TRANSITIONS (InvalidTransition otherwise).

        `fields`: ip_connection_string, dns_connection_string, external_ip, error_message.
        `expected`: refuse unless the row is currently in this state (or one of these states).
        """
        return self._transition_own(
            INSTANCE, instance_id, to_state, reason=reason, run_id=run_id, fields=fields, expected=expected
        )

    # ---- images -----------------------------------------------------------------------------

    def reserve_image(
        self, *, image_id: uuid.UUID | str | None, name: str, description: str | None, source: Instance,
        blob_storage_url: str, blob_container: str, blob_path: str, run_id: str | None,
    ) -> Image:
        """A new image row in state `creating`; NameConflict("name", ...) when the name is taken."""
        validate_image_name(name, field="name")
        values = {
            "id": uuid.UUID(str(image_id)) if image_id else uuid.uuid4(),
            "name": name,
            "description": description,
            "source_instance_id": source.id,
            "source_k8s_name": source.k8s_name,
            "source_namespace": source.namespace,
            "blob_storage_url": blob_storage_url,
            "blob_container": blob_container,
            "blob_path": blob_path,
            "storage_size_gb": source.storage_size_gb,
            "postgres_version": source.postgres_version,
            "image_type": ImageType(source.image_type).value,
            "state": ImageState.creating.value,
            "run_id": run_id,
        }
        return self._insert(IMAGE, values)

    def set_image_password(self, image_id: uuid.UUID | str, password: SecretStr | str) -> None:
        """Store the source instance's password, Fernet-encrypted with encryption_key."""
        plaintext = password.get_secret_value() if isinstance(password, SecretStr) else password
        token = self._fernet().encrypt(plaintext.encode())
        parsed = parse_uuid(str(image_id))
        with self.connection() as conn:
            updated = conn.execute(
                sql.SQL("UPDATE {} SET source_password_encrypted = %s, updated_at = now() WHERE id = %s").format(
                    IMAGE.table_id
                ),
                [token, parsed],
            ).rowcount if parsed else 0
        if not updated:
            raise ImageNotFound(image_id)

    def image_password(self, image_id: uuid.UUID | str) -> SecretStr:
        """The decrypted source password of an image (PasswordUnavailable when missing/undecryptable)."""
        parsed = parse_uuid(str(image_id))
        row = None
        if parsed is not None:
            with self.connection() as conn:
                row = conn.execute(
                    sql.SQL("SELECT name, source_password_encrypted FROM {} WHERE id = %s").format(IMAGE.table_id),
                    [parsed],
                ).fetchone()
        if row is None:
            raise ImageNotFound(image_id)
        name, token = row
        if token is None:
            raise PasswordUnavailable(f"image {name} ({image_id}) has no stored source password")
        try:
            return SecretStr(self._fernet().decrypt(bytes(token)).decode())
        except InvalidToken:
            raise PasswordUnavailable(
                f"image {name} ({image_id}): the stored source password cannot be decrypted with the"
                " configured encryption_key (TOYGRES_ENCRYPTION_KEY differs from the key it was stored with)"
            ) from None

    def get_image(self, image_id: uuid.UUID | str) -> Image | None:
        return self._get(IMAGE, image_id)

    def find_image(self, ref: str) -> Image | None:
        """An image by id (uuid string) or by name: the live (not failed/deleted) one, else the newest."""
        found = self._get(IMAGE, ref)
        if found is not None:
            return found
        rows = self._select(
            IMAGE, sql.SQL("name = %s"), [str(ref)],
            order="(state IN ('failed', 'deleted')), created_at DESC, id", limit=1,
        )
        return rows[0] if rows else None

    def find_image_by_run(self, run_id: str) -> Image | None:
        return self._by_run(IMAGE, run_id)

    def list_images(self, states: Iterable[ImageState] | None = None) -> list[Image]:
        return self._list(IMAGE, states)

    def transition_image(
        self, image_id: uuid.UUID | str, to_state: ImageState | str, *, reason: str | None = None,
        run_id: str | None = None, expected: ImageState | Iterable[ImageState] | None = None,
        **fields: Any,
    ) -> Image:
        """Move an image per IMAGE_TRANSITIONS; ready sets ready_at, deleted sets deleted_at.

        `fields`: backup_size_bytes, backup_checksum, error_message.
        """
        return self._transition_own(
            IMAGE, image_id, to_state, reason=reason, run_id=run_id, fields=fields, expected=expected
        )

    # ---- events -----------------------------------------------------------------------------

    def events(self, entity_id: uuid.UUID | str) -> list[Event]:
        parsed = entity_id if isinstance(entity_id, uuid.UUID) else parse_uuid(str(entity_id))
        if parsed is None:
            return []
        with self.connection() as conn:
            return conn.cursor(row_factory=class_row(Event)).execute(
                sql.SQL(
                    "SELECT id, entity_type, entity_id, from_state, to_state, reason, run_id, created_at"
                    " FROM {} WHERE entity_id = %s ORDER BY id"
                ).format(sql.Identifier(SCHEMA, "events")),
                [parsed],
            ).fetchall()

    # ---- requests ---------------------------------------------------------------------------

    def create_image_request(
        self, *, image_name: str, source_instance: str, description: str | None = None,
        request_id: uuid.UUID | str | None = None,
    ) -> ImageRequest:
        """Queue an on-demand backup (state pending). Validation happens when a sensor claims it."""
        values = {
            "id": uuid.UUID(str(request_id)) if request_id else uuid.uuid4(),
            "image_name": image_name,
            "source_instance": str(source_instance),
            "description": description,
            "state": RequestState.pending.value,
        }
        return self._insert(IMAGE_REQUEST, values)

    def create_restore_request(
        self, *, name: str, dns_label: str, source_image_id: str, namespace: str, storage_size_gb: int,
        internal: bool, runtime_image_id: str | None = None, image_override: str | None = None,
        request_id: uuid.UUID | str | None = None, password: str | None = None,
    ) -> RestoreRequest:
        """Queue a restore (state pending). source_image_id: an image id or name.

        `password` is accepted for compatibility and ignored (a restored instance keeps the
        source image's password): it is never stored.
        """
        if password is not None:
            warnings.warn("password is ignored for restores and stored nowhere", UserWarning, stacklevel=2)
        values = {
            "id": uuid.UUID(str(request_id)) if request_id else uuid.uuid4(),
            "name": name,
            "dns_label": dns_label,
            "source_image_id": str(source_image_id) if source_image_id is not None else None,
            "namespace": namespace,
            "storage_size_gb": storage_size_gb,
            "internal": internal,
            "runtime_image_id": runtime_image_id,
            "image_override": image_override,
            "state": RequestState.pending.value,
        }
        return self._insert(RESTORE_REQUEST, values)

    @contextmanager
    def _claim(self, kind: _Kind, limit: int) -> Iterator[ClaimedRequests]:
        with self.connection() as conn:
            rows = self._select(
                kind, sql.SQL("state = %s"), [RequestState.pending.value], order="created_at, id",
                limit=limit, conn=conn, lock="FOR UPDATE SKIP LOCKED",
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
        self, request_id: uuid.UUID | str, to_state: RequestState | str, *, reason: str | None = None,
        run_id: str | None = None, expected: RequestState | Iterable[RequestState] | None = None,
    ) -> ImageRequest:
        return self._transition_own(
            IMAGE_REQUEST, request_id, to_state, reason=reason, run_id=run_id, fields={}, expected=expected
        )

    def transition_restore_request(
        self, request_id: uuid.UUID | str, to_state: RequestState | str, *, reason: str | None = None,
        run_id: str | None = None, instance_id: uuid.UUID | str | None = None,
        expected: RequestState | Iterable[RequestState] | None = None,
    ) -> RestoreRequest:
        fields = {"instance_id": uuid.UUID(str(instance_id))} if instance_id else {}
        return self._transition_own(
            RESTORE_REQUEST, request_id, to_state, reason=reason, run_id=run_id, fields=fields,
            expected=expected,
        )

    def attach_request_run(self, request_id: uuid.UUID | str, run_id: str) -> ImageRequest | RestoreRequest:
        """Record the run of an accepted request (when the run id was not known at accept time)."""
        parsed = parse_uuid(str(request_id))
        if parsed is not None:
            with self.connection() as conn:
                for kind in (IMAGE_REQUEST, RESTORE_REQUEST):
                    row = conn.cursor(row_factory=class_row(kind.model)).execute(
                        sql.SQL(
                            "UPDATE {table} SET run_id = %s, updated_at = now() WHERE id = %s RETURNING {columns}"
                        ).format(table=kind.table_id, columns=kind.columns),
                        [run_id, parsed],
                    ).fetchone()
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

    def _unlaunched(self, kind: _Kind, limit: int) -> list[tuple[Any, float]]:
        query = sql.SQL(
            "SELECT {columns}, extract(epoch FROM now() - updated_at)::float8 AS age FROM {table}"
            " WHERE state = %s AND run_id IS NULL ORDER BY updated_at, id LIMIT %s"
        ).format(columns=kind.columns, table=kind.table_id)
        with self.connection() as conn:
            rows = conn.execute(query, [RequestState.accepted.value, limit]).fetchall()
        names = list(kind.model.model_fields)
        return [(kind.model.model_validate(dict(zip(names, row[:-1]))), float(row[-1])) for row in rows]

    def list_unlaunched_image_requests(self, limit: int = 100) -> list[tuple[ImageRequest, float]]:
        """Accepted image requests with no run recorded yet, each with its age in seconds since
        it was accepted (measured by the database's clock), oldest first."""
        return self._unlaunched(IMAGE_REQUEST, limit)

    def list_unlaunched_restore_requests(self, limit: int = 100) -> list[tuple[RestoreRequest, float]]:
        """Like list_unlaunched_image_requests, for restore requests."""
        return self._unlaunched(RESTORE_REQUEST, limit)


__all__ = [
    "CMSError", "CMSResource", "ClaimedRequests", "EncryptionKeyInvalid", "ImageNotFound",
    "InstanceNotFound", "InvalidTransition", "MigrationError", "NameConflict", "NotFound",
    "PasswordUnavailable", "RequestNotFound", "SCHEMA", "migrations",
]
