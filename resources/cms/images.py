"""toygres_cms.images: images, their states and their encrypted source passwords."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from typing import Any

from psycopg import sql
from pydantic import SecretStr

from records import (
    Image,
    ImageState,
    ImageType,
    Instance,
    InstanceState,
    RequestState,
    ValidationFailed,
    parse_uuid,
    validate_image_name,
)
from records.lifecycle import check_deletable, check_not_newest_ready, group_of, images_in_use
from resources.cms.drills import running_drills_of
from resources.cms.encryption import InvalidToken
from resources.cms.errors import ImageNotFound, PasswordUnavailable
from resources.cms.queries import Queries
from resources.cms.tables import (
    IMAGE,
    INSTANCE,
    RESTORE_REQUEST,
)

# First key of the per-instance pg_advisory_xact_lock(int4, int4) every deletion takes ("tgim").
IMAGE_GROUP_LOCK_KEY = 0x7467696D


class ImagesTable(Queries):
    """cms.images"""

    def reserve(
        self,
        *,
        image_id: uuid.UUID | str | None,
        name: str,
        description: str | None,
        source: Instance,
        blob_storage_url: str,
        blob_container: str,
        blob_path: str,
        run_id: str | None,
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

    def set_password(self, image_id: uuid.UUID | str, password: SecretStr | str) -> None:
        """Store the source instance's password, Fernet-encrypted with encryption_key."""
        plaintext = password.get_secret_value() if isinstance(password, SecretStr) else password
        token = self.passwords().encrypt(plaintext)
        parsed = parse_uuid(str(image_id))
        with self.connection() as conn:
            updated = (
                conn.execute(
                    sql.SQL("UPDATE {} SET source_password_encrypted = %s, updated_at = now() WHERE id = %s").format(
                        IMAGE.table_id
                    ),
                    [token, parsed],
                ).rowcount
                if parsed
                else 0
            )
        if not updated:
            raise ImageNotFound(image_id)

    def password(self, image_id: uuid.UUID | str) -> SecretStr:
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
            return SecretStr(self.passwords().decrypt(bytes(token)))
        except InvalidToken:
            raise PasswordUnavailable(
                f"image {name} ({image_id}): the stored source password cannot be decrypted with the"
                " configured encryption_key (TOYGRES_ENCRYPTION_KEY differs from the key it was stored with)"
            ) from None

    def get(self, image_id: uuid.UUID | str) -> Image | None:
        return self._get(IMAGE, image_id)

    def find(self, ref: str, field: str = "image") -> Image | None:
        """An image by id (any spelling of a uuid) or by name: the live (not failed/deleted) one,
        else the newest. A UUID-shaped reference is an id (names never are, see
        validate_image_name); when it is also the name of another image (a row named before that
        rule) the lookup is ambiguous: ValidationFailed(field)."""
        parsed = parse_uuid(str(ref))
        found = self._get(IMAGE, parsed) if parsed is not None else None
        rows = self._select(
            IMAGE,
            sql.SQL("name = %s"),
            [str(ref)],
            order="(state IN ('failed', 'deleted')), created_at DESC, id",
            limit=1,
        )
        named = rows[0] if rows else None
        if found is not None and named is not None and named.id != found.id:
            raise ValidationFailed(
                field,
                f"{ref!r} is ambiguous: the id of image {found.name!r} and the name of image {named.id}"
                " (named before image names were checked); refer to the image by its id",
            )
        return found or named

    def find_by_run(self, run_id: str) -> Image | None:
        return self._by_run(IMAGE, run_id)

    def list(self, states: Iterable[ImageState] | None = None) -> builtins.list[Image]:
        return self._list(IMAGE, states)

    def page(
        self, states: Iterable[ImageState] | None = None, *, limit: int | None, offset: int = 0
    ) -> tuple[builtins.list[Image], int]:
        """`limit` images (None: all) from `offset` on, oldest first (created_at, then id: a stable
        order), and how many images (of these states) there are in all."""
        return self._page(IMAGE, states, limit, offset)

    def set_pinned(self, image_id: uuid.UUID | str, pinned: bool) -> Image:
        """Pin (never deleted) or unpin an image; the caller checks the image may be pinned."""
        parsed = parse_uuid(str(image_id))
        row = None
        if parsed is not None:
            with self.connection() as conn:
                row = conn.execute(
                    sql.SQL("UPDATE {} SET pinned = %s, updated_at = now() WHERE id = %s RETURNING id").format(
                        IMAGE.table_id
                    ),
                    [pinned, parsed],
                ).fetchone()
        image = self.get(parsed) if row is not None and parsed is not None else None
        if image is None:
            raise ImageNotFound(image_id)
        return image

    def begin_deletion(
        self, image_id: uuid.UUID | str, *, reason: str, run_id: str | None, keep_newest_ready: bool = False
    ) -> Image:
        """`-> deleting` (with its event) after the deletion rules (`records.lifecycle.check_deletable`)
        hold, all under the image row's lock: a restore creating an instance from it holds a share
        lock on that row, so it either committed before the users are read here or sees `deleting`.

        keep_newest_ready (retention): the image must not be the newest ready image of its instance
        at this moment. Every deletion of an instance's images takes that instance's advisory lock
        first and the retention check reads its ready images FOR SHARE, so a newer image turning
        corrupt or deleting is either committed before the check or waits for this transaction."""
        parsed = parse_uuid(str(image_id))
        if parsed is None:
            raise ImageNotFound(image_id)
        found = self.get(parsed)
        if found is None:
            raise ImageNotFound(image_id)
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (IMAGE_GROUP_LOCK_KEY, group_of(found)))
            rows = self._select(IMAGE, sql.SQL("id = %s"), [parsed], conn=conn, lock="FOR UPDATE")
            if not rows:
                raise ImageNotFound(image_id)
            image: Image = rows[0]
            requests = self._select(
                RESTORE_REQUEST,
                sql.SQL("state = ANY(%s)"),
                [[RequestState.pending.value, RequestState.accepted.value]],
                conn=conn,
            )
            instances = self._select(
                INSTANCE,
                sql.SQL("state = %s AND source_image_id = %s"),
                [InstanceState.creating.value, parsed],
                conn=conn,
            )
            drills = running_drills_of(conn, parsed)
            check_deletable(image, images_in_use([image], requests, instances, drills).get(image.id))
            if keep_newest_ready:
                check_not_newest_ready(image, self._ready_of_group(conn, image))
            if image.state is ImageState.deleting:
                return image
            return self._transition(
                conn, IMAGE, parsed, ImageState.deleting, reason=reason, run_id=run_id, fields={}, expected=None
            )

    def _ready_of_group(self, conn: Any, image: Image) -> builtins.list[Image]:
        """The ready images of image's instance, share-locked in id order (no lock cycle)."""
        where = (
            sql.SQL("source_instance_id = %s AND state = %s")
            if image.source_instance_id
            else sql.SQL("source_instance_id IS NULL AND source_namespace = %s AND source_k8s_name = %s AND state = %s")
        )
        params = (
            [image.source_instance_id, ImageState.ready.value]
            if image.source_instance_id
            else [image.source_namespace, image.source_k8s_name, ImageState.ready.value]
        )
        return self._select(IMAGE, where, params, order="id", conn=conn, lock="FOR SHARE")

    def transition(
        self,
        image_id: uuid.UUID | str,
        to_state: ImageState | str,
        *,
        reason: str | None = None,
        run_id: str | None = None,
        expected: ImageState | Iterable[ImageState] | None = None,
        **fields: Any,
    ) -> Image:
        """Move an image per IMAGE_TRANSITIONS; ready sets ready_at, deleted sets deleted_at.

        `fields`: backup_size_bytes, backup_checksum, error_message, encryption_recipient.
        """
        return self._transition_own(
            IMAGE, image_id, to_state, reason=reason, run_id=run_id, fields=fields, expected=expected
        )
