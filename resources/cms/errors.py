"""The CMS resource's own errors (bad input raises records.ValidationFailed)."""

from __future__ import annotations

from typing import Any

from records import ValidationFailed


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
