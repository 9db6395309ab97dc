"""Naming rules: the launchpad, the sensors and the CLI apply these very functions."""

from __future__ import annotations

import re
import secrets
import string
import uuid

from records.errors import ValidationFailed, shown

# Matched with fullmatch: with match, `$` alone lets "x\n" through.
IMAGE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,100}")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
K8S_NAME_SUFFIX_LENGTH = 5
# k8s_name feeds StatefulSet pod names (<name>-0) and the controller-revision-hash label, which
# limit the StatefulSet name to 52 characters; leave room for "-" + the random suffix.
K8S_NAME_MAX = 52
INSTANCE_NAME_MAX = K8S_NAME_MAX - 1 - K8S_NAME_SUFFIX_LENGTH
DNS_LABEL_MAX = 63


def validate_image_name(name: str, field: str = "name") -> str:
    if not IMAGE_NAME_PATTERN.fullmatch(name or ""):
        raise ValidationFailed(field, f"{shown(name)} must be 1-100 characters of letters, digits, '_' or '-'")
    if parse_uuid(name) is not None:
        # Lookups take a UUID-shaped reference for an id: such a name could stand for another image.
        raise ValidationFailed(field, f"{shown(name)} reads as an image id (a UUID): an image name must not be one")
    return name


def validate_dns_label(value: str, field: str, max_length: int = DNS_LABEL_MAX) -> str:
    if not value or len(value) > max_length:
        raise ValidationFailed(field, f"{shown(value)} must be 1-{max_length} characters long")
    if not DNS1123_LABEL.fullmatch(value):
        raise ValidationFailed(
            field,
            f"{shown(value)} must be a DNS-1123 label: lowercase letters, digits and '-',"
            " starting and ending with a letter or digit",
        )
    return value


AZURE_DNS_LABEL = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")


def validate_azure_dns_label(value: str, field: str) -> str:
    """A Service's azure-dns-label-name: <label>.<region>.cloudapp.azure.com must be accepted by Azure."""
    validate_dns_label(value, field)
    if not 3 <= len(value) <= DNS_LABEL_MAX:
        raise ValidationFailed(field, f"{shown(value)} must be 3-{DNS_LABEL_MAX} characters (Azure's DNS label rule)")
    if not AZURE_DNS_LABEL.fullmatch(value):
        raise ValidationFailed(field, f"{shown(value)} must start with a letter (Azure's DNS label rule)")
    return value


def new_k8s_name(name: str) -> str:
    """The instance's Kubernetes name: the user's name plus a short random suffix."""
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(K8S_NAME_SUFFIX_LENGTH))
    return f"{name}-{suffix}"


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
