"""Which job images may run: one build each, never a moving tag."""

from __future__ import annotations

import re

# A tag that names a moving target: `latest`, a bare version (`17`, `17.6`) or a version-variant.
MUTABLE_TAG = re.compile(r"latest|\d+(\.\d+)*(-[a-z]+[0-9.]*)?")


class ManifestError(ValueError):
    """A value cannot be turned into a valid manifest (bad name, bad label key...)."""


def check_pinned_image(image: str, what: str) -> str:
    """A job image must name one build: by digest, or by a tag that is not a moving one
    (`latest`, `17`, `17.6`, `17-bookworm`...), so a node's cached `:17` is never run in its place."""
    name, at, digest = image.partition("@")
    if at:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ManifestError(f"{what}: {image!r} has an invalid digest (expected @sha256:<64 hex digits>)")
        return image
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    if not tag or MUTABLE_TAG.fullmatch(tag):
        raise ManifestError(
            f"{what}: {image!r} is not pinned: use @sha256:<digest> or a unique tag (not latest, not a bare version)"
        )
    return image
