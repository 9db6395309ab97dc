"""The resources the code location runs with, chosen by environment variables.

TOYGRES_PLATFORM=local (default) or kubernetes; see docs/setup.md for every variable.
"""

import os
import re
from typing import Any

import dagster as dg

from records import ValidationFailed
from records.bounds import field_bounds, numeric_rule
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from resources.platform.local import LocalPlatform
from resources.platform.local_tools import azcopy_path

DEFAULT_STATE_DIR = "/var/tmp/toygres-dev"
# The bounds BlobStorageResource declares for transfer_stall_seconds (declared once, there).
STALL_BOUNDS = field_bounds(BlobStorageResource, "transfer_stall_seconds")


def cms_from_env() -> CMSResource:
    return CMSResource(dsn=dg.EnvVar("TOYGRES_CMS_DSN"), encryption_key=dg.EnvVar("TOYGRES_ENCRYPTION_KEY"))


def blob_from_env() -> BlobStorageResource:
    container = os.environ.get("TOYGRES_BLOB_CONTAINER", "toygres-images")
    configured = os.environ.get("TOYGRES_TRANSFER_STALL_SECONDS", "").strip()
    stall: dict[str, Any] = {"transfer_stall_seconds": stall_seconds(configured)} if configured else {}
    if os.environ.get("TOYGRES_BLOB_ACCOUNT_URL") and not os.environ.get("TOYGRES_BLOB_CONNECTION_STRING"):
        return BlobStorageResource(container=container, account_url=dg.EnvVar("TOYGRES_BLOB_ACCOUNT_URL"), **stall)
    return BlobStorageResource(
        container=container, connection_string=dg.EnvVar("TOYGRES_BLOB_CONNECTION_STRING"), **stall
    )


def stall_seconds(configured: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", configured) or not STALL_BOUNDS["ge"] <= int(configured) <= STALL_BOUNDS["le"]:
        rule = numeric_rule(BlobStorageResource, "transfer_stall_seconds")
        raise ValidationFailed("TOYGRES_TRANSFER_STALL_SECONDS", f"{configured!r} must be {rule}")
    return int(configured)


def platform_from_env() -> PlatformResource:
    kind = os.environ.get("TOYGRES_PLATFORM", "local")
    if kind == "kubernetes":
        return kubernetes_platform_from_env()
    if kind != "local":
        raise ValueError(f"TOYGRES_PLATFORM: {kind!r} must be 'local' or 'kubernetes'")
    return LocalPlatform(
        state_dir=os.environ.get("TOYGRES_STATE_DIR", DEFAULT_STATE_DIR),
        azcopy_path=os.environ.get("TOYGRES_AZCOPY", str(azcopy_path())),
        age_identity_file=os.environ.get("TOYGRES_AGE_IDENTITY_FILE") or None,
        **encryption_from_env(),
    )


def encryption_from_env() -> dict[str, Any]:
    """Client-side encryption (docs/encryption.md): public keys only; the private keys reach restore
    jobs as a file (local) or a Secret (Kubernetes), never through this process's settings."""
    fields: dict[str, Any] = {}
    if os.environ.get("TOYGRES_AGE_RECIPIENT", "").strip():
        fields["age_recipient"] = os.environ["TOYGRES_AGE_RECIPIENT"].strip()
    if os.environ.get("TOYGRES_AGE_IDENTITY_RECIPIENTS", "").strip():
        fields["age_identity_recipients"] = _list(os.environ["TOYGRES_AGE_IDENTITY_RECIPIENTS"])
    return fields


def kubernetes_platform_from_env() -> PlatformResource:
    """Only the variables that are set are passed: every default lives in KubernetesPlatform."""
    from resources.platform.kubernetes import KubernetesPlatform

    text = {
        "namespace": "TOYGRES_K8S_NAMESPACE",
        "service_account_name": "TOYGRES_K8S_SERVICE_ACCOUNT",
        "storage_class": "TOYGRES_K8S_STORAGE_CLASS",
        "azure_region": "TOYGRES_K8S_REGION",
        "kube_context": "TOYGRES_K8S_CONTEXT",
        "kubeconfig_path": "KUBECONFIG",
        "age_identity_secret": "TOYGRES_K8S_AGE_IDENTITY_SECRET",
        "allow_public_without_source_ranges": "TOYGRES_K8S_ALLOW_PUBLIC_WITHOUT_SOURCE_RANGES",  # true|false
        "tls_ca_secret": "TOYGRES_K8S_TLS_CA_SECRET",  # the CA Secret's name in each instance namespace
        "archiver_image": "TOYGRES_K8S_ARCHIVER_IMAGE",  # the project image, pinned: the WAL archiver Deployments
    }
    lists = {
        "instance_namespaces": "TOYGRES_K8S_INSTANCE_NAMESPACES",  # team-a,team-b
        "load_balancer_source_ranges": "TOYGRES_K8S_LOAD_BALANCER_SOURCE_RANGES",  # 203.0.113.0/24,...
    }
    maps = {
        "job_images": "TOYGRES_K8S_JOB_IMAGES",  # 16=<registry>/toygres-job@sha256:...,17=...
        "postgres_images": "TOYGRES_K8S_POSTGRES_IMAGES",  # 16=postgres@sha256:... (default: the job images)
    }
    fields: dict = {field: os.environ[var] for field, var in text.items() if os.environ.get(var)}
    fields |= {field: _list(os.environ[var]) for field, var in lists.items() if os.environ.get(var)}
    fields |= {field: _map(var, os.environ[var]) for field, var in maps.items() if os.environ.get(var)}
    return KubernetesPlatform(**fields, **encryption_from_env())


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _map(var: str, value: str) -> dict[str, str]:
    pairs = {}
    for item in _list(value):
        key, sep, mapped = item.partition("=")
        if not sep or not key.strip() or not mapped.strip():
            raise ValueError(f"{var}: {item!r} must be <key>=<value> (comma-separated pairs)")
        pairs[key.strip()] = mapped.strip()
    return pairs


def configured_by_the_deployment(resource: dg.ConfigurableResource) -> dg.ResourceDefinition:
    """The resource as the deployment's variables configure it, with no run config: the launchpad
    shows none of its settings (paths of this machine, DSNs) and a run cannot change them. Its
    EnvVars are read when a run or sensor starts, as before."""
    return dg.ResourceDefinition(
        resource_fn=lambda _: resource.process_config_and_initialize(),
        description=f"{type(resource).__name__}, configured by the deployment (TOYGRES_* variables, docs/setup.md)",
    )


def resources_from_env() -> dict:
    return {
        "cms": configured_by_the_deployment(cms_from_env()),
        "blob": configured_by_the_deployment(blob_from_env()),
        "platform": configured_by_the_deployment(platform_from_env()),
    }
