"""Client-side encryption of images with age: what a recipient is, and what an image records.

An encrypting deployment encrypts every dump file of an image to one age X25519 recipient (the
public key) inside the backup job; the private key (the identity) reaches restore jobs only.
The manifest and the CMS row name the recipient itself: it is public, and `age-keygen -y` on an
identity file prints the very same string, so anyone can see which key opens an image.
"""

from __future__ import annotations

import re
from typing import Literal

from records.errors import ValidationFailed
from records.rows import Record

# bech32: "age1" + 58 characters of the bech32 alphabet (a 32-byte X25519 public key + checksum)
AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
AGE_HEADER = b"age-encryption.org/v1\n"


class ImageEncryption(Record):
    """manifest.json's `encryption`: the files (not the manifest) are age-encrypted to `recipient`."""

    format: Literal["age"] = "age"
    recipient: str


def validate_age_recipient(value: str, field: str) -> str:
    """An age X25519 recipient; the message never repeats the value (it may be a pasted private key)."""
    if not AGE_RECIPIENT.fullmatch(value):
        raise ValidationFailed(
            field, "must be an age X25519 recipient (age1... the public key, as `age-keygen -y` prints it)"
        )
    return value


def refuse_pasted_identity(value: str, field: str, what: str) -> str:
    """A setting that says where the age private keys are (`what`: a file path, a Secret name)
    must not hold a key itself; the message never repeats the value."""
    if "SECRET-KEY" in value.upper() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationFailed(
            field,
            f"must be {what}, not an age private key or key file text (it holds one, or a line break);"
            " the value is not repeated here. Put the keys where the setting points instead",
        )
    return value


def check_identity_for(recipient: str | None, available: list[str], image_name: str) -> None:
    """Refuse, before anything is created, to restore an encrypted image no restore job can open."""
    if recipient is None or recipient in available:
        return
    held = ", ".join(available) if available else "none"
    raise ValidationFailed(
        "source_image_id",
        f"image {image_name!r} is encrypted with age for recipient {recipient}; this deployment's restore jobs"
        f" hold no identity for it (identities for: {held}). Keep the old key beside the new one in the identity"
        " file or Secret and list its recipient in age_identity_recipients (TOYGRES_AGE_IDENTITY_RECIPIENTS).",
    )
