"""Records and rules: what crosses a boundary (CMS rows, requests, manifests, job results) and the
naming rules every entry point applies. The bottom layer: it imports nothing of this project.
"""

from records.errors import ValidationFailed, shown
from records.manifest import BackupFile, BackupManifest
from records.naming import (
    DNS1123_LABEL,
    DNS_LABEL_MAX,
    IMAGE_NAME_PATTERN,
    INSTANCE_NAME_MAX,
    K8S_NAME_MAX,
    K8S_NAME_SUFFIX_LENGTH,
    new_k8s_name,
    parse_uuid,
    validate_azure_dns_label,
    validate_dns_label,
    validate_image_name,
)
from records.platform import ConnectionStrings, Endpoints, InstanceRef, JobResult, LogSink
from records.requests import ImageRequest, ImageRequestFields, RestoreRequest, RestoreRequestFields
from records.rows import Event, Image, Instance, Record
from records.states import (
    IMAGE_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    REQUEST_TRANSITIONS,
    ImageState,
    ImageType,
    InstanceState,
    RequestState,
)

__all__ = [
    "DNS1123_LABEL",
    "DNS_LABEL_MAX",
    "IMAGE_NAME_PATTERN",
    "IMAGE_TRANSITIONS",
    "INSTANCE_NAME_MAX",
    "INSTANCE_TRANSITIONS",
    "K8S_NAME_MAX",
    "K8S_NAME_SUFFIX_LENGTH",
    "REQUEST_TRANSITIONS",
    "BackupFile",
    "BackupManifest",
    "ConnectionStrings",
    "Endpoints",
    "Event",
    "Image",
    "ImageRequest",
    "ImageRequestFields",
    "ImageState",
    "ImageType",
    "Instance",
    "InstanceRef",
    "InstanceState",
    "JobResult",
    "LogSink",
    "Record",
    "RequestState",
    "RestoreRequest",
    "RestoreRequestFields",
    "ValidationFailed",
    "shown",
    "new_k8s_name",
    "parse_uuid",
    "validate_azure_dns_label",
    "validate_dns_label",
    "validate_image_name",
]
