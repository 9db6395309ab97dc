"""toygres_cms.instances: the instances this system knows and their states."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from records import (
    K8S_NAME_MAX,
    ImageState,
    ImageType,
    Instance,
    InstanceState,
    ValidationFailed,
    parse_uuid,
    validate_dns_label,
)
from resources.cms.errors import InstanceNotFound
from resources.cms.queries import Queries, fetch_one
from resources.cms.tables import (
    IMAGE,
    INSTANCE,
)


class InstancesTable(Queries):
    """cms.instances"""

    def create(
        self,
        *,
        user_name: str,
        k8s_name: str,
        namespace: str,
        postgres_version: str,
        storage_size_gb: int,
        use_load_balancer: bool,
        dns_name: str | None,
        image_type: ImageType | str,
        source_image_id: uuid.UUID | str | None = None,
        run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        instance_id: uuid.UUID | str | None = None,
        state: InstanceState | str = InstanceState.creating,
        source_postgres_version: str | None = None,
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
            "source_postgres_version": source_postgres_version,
        }
        source = uuid.UUID(str(source_image_id)) if source_image_id else None
        restoring = source is not None and InstanceState(state) is InstanceState.creating
        return self._insert(
            INSTANCE, values, first=lambda conn: self._lock_ready_source(conn, source) if restoring and source else None
        )

    @staticmethod
    def _lock_ready_source(conn: psycopg.Connection, image_id: uuid.UUID) -> None:
        """The source image must be ready, and stays so until the instance row commits: a deletion
        (`cms.images.begin_deletion`, FOR UPDATE) waits for this lock, then sees the creating instance."""
        row = conn.execute(
            sql.SQL("SELECT name, state FROM {} WHERE id = %s FOR SHARE").format(IMAGE.table_id), [image_id]
        ).fetchone()
        if row is None:
            raise ValidationFailed("source_image_id", f"no image with id {str(image_id)!r}")
        if row[1] != ImageState.ready.value:
            raise ValidationFailed("source_image_id", f"image {row[0]!r} is {row[1]}, it must be ready")

    def get(self, instance_id: uuid.UUID | str) -> Instance | None:
        return self._get(INSTANCE, instance_id)

    def find(self, ref: str) -> Instance | None:
        """An instance by id (uuid string) or by k8s_name."""
        found = self._get(INSTANCE, ref)
        if found is not None:
            return found
        rows = self._select(INSTANCE, sql.SQL("k8s_name = %s"), [str(ref)])
        return rows[0] if rows else None

    def find_by_run(self, run_id: str) -> Instance | None:
        return self._by_run(INSTANCE, run_id)

    def find_by_tag(self, key: str, value: str) -> builtins.list[Instance]:
        """Instances whose tags map `key` to `value` (how a repeated request finds its instance)."""
        return self._select(INSTANCE, sql.SQL("tags ->> %s = %s"), [key, value])

    def list(self, states: Iterable[InstanceState] | None = None) -> builtins.list[Instance]:
        return self._list(INSTANCE, states)

    def dns_name_in_use(self, dns_name: str) -> bool:
        with self.connection() as conn:
            row = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE dns_name = %s AND state = ANY(%s))").format(
                    INSTANCE.table_id
                ),
                [dns_name, [InstanceState.creating.value, InstanceState.running.value]],
            )
            return bool(fetch_one(row)[0])

    def set_retention_override(self, instance_id: uuid.UUID | str, override: dict[str, Any] | None) -> Instance:
        """Store the fields of the retention policy this instance overrides (None: the default applies)."""
        parsed = parse_uuid(str(instance_id))
        updated = 0
        if parsed is not None:
            with self.connection() as conn:
                updated = conn.execute(
                    sql.SQL("UPDATE {} SET retention_override = %s, updated_at = now() WHERE id = %s").format(
                        INSTANCE.table_id
                    ),
                    [Jsonb(override) if override else None, parsed],
                ).rowcount
        instance = self.get(instance_id) if updated else None
        if instance is None:
            raise InstanceNotFound(instance_id)
        return instance

    def transition(
        self,
        instance_id: uuid.UUID | str,
        to_state: InstanceState | str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        expected: InstanceState | Iterable[InstanceState] | None = None,
        **fields: Any,
    ) -> Instance:
        """Move an instance per INSTANCE_TRANSITIONS (InvalidTransition otherwise).

        `fields`: ip_connection_string, dns_connection_string, external_ip, error_message.
        `expected`: refuse unless the row is currently in this state (or one of these states).
        """
        return self._transition_own(
            INSTANCE, instance_id, to_state, reason=reason, run_id=run_id, fields=fields, expected=expected
        )
