"""The resources the code location runs with, chosen by environment variables.

TOYGRES_PLATFORM=local (default) or kubernetes; see docs/setup.md for every variable.
"""

import os

import dagster as dg

from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from resources.platform.local import LocalPlatform
from toygres_pipelines.stack import azcopy_path

DEFAULT_STATE_DIR = "/var/tmp/toygres-dev"


def cms_from_env() -> CMSResource:
    return CMSResource(dsn=dg.EnvVar("TOYGRES_CMS_DSN"), encryption_key=dg.EnvVar("TOYGRES_ENCRYPTION_KEY"))


def blob_from_env() -> BlobStorageResource:
    container = os.environ.get("TOYGRES_BLOB_CONTAINER", "toygres-images")
    stall = {"transfer_stall_seconds": int(v) for v in [os.environ.get("TOYGRES_TRANSFER_STALL_SECONDS")] if v}
    if os.environ.get("TOYGRES_BLOB_ACCOUNT_URL") and not os.environ.get("TOYGRES_BLOB_CONNECTION_STRING"):
        return BlobStorageResource(container=container, account_url=dg.EnvVar("TOYGRES_BLOB_ACCOUNT_URL"), **stall)
    return BlobStorageResource(container=container, connection_string=dg.EnvVar("TOYGRES_BLOB_CONNECTION_STRING"), **stall)


def platform_from_env() -> PlatformResource:
    kind = os.environ.get("TOYGRES_PLATFORM", "local")
    if kind == "kubernetes":
        return kubernetes_platform_from_env()
    if kind != "local":
        raise ValueError(f"TOYGRES_PLATFORM: {kind!r} must be 'local' or 'kubernetes'")
    return LocalPlatform(
        state_dir=os.environ.get("TOYGRES_STATE_DIR", DEFAULT_STATE_DIR),
        azcopy_path=os.environ.get("TOYGRES_AZCOPY", str(azcopy_path())),
    )


def kubernetes_platform_from_env() -> PlatformResource:
    from resources.platform.kubernetes import KubernetesPlatform

    settings = {
        "namespace": "TOYGRES_K8S_NAMESPACE",
        "service_account_name": "TOYGRES_K8S_SERVICE_ACCOUNT",
        "job_image": "TOYGRES_K8S_JOB_IMAGE",
        "storage_class": "TOYGRES_K8S_STORAGE_CLASS",
        "azure_region": "TOYGRES_K8S_REGION",
        "kube_context": "TOYGRES_K8S_CONTEXT",
        "kubeconfig_path": "KUBECONFIG",
    }
    return KubernetesPlatform(**{field: os.environ[var] for field, var in settings.items() if os.environ.get(var)})


def resources_from_env() -> dict:
    return {"cms": cms_from_env(), "blob": blob_from_env(), "platform": platform_from_env()}
