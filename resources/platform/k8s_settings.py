"""Every setting the rendered Kubernetes manifests use, declared once with its default.

`KubernetesPlatform` (the Dagster resource) inherits these fields, so they are configured where
the platform is; the renderers in `k8s_manifests.py` read them from this model. The templates
show these same defaults (`tests/kubernetes/test_k8s_hardening.py` holds them to it).
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from records.encryption import refuse_pasted_identity
from resources.platform.k8s_images import check_pinned_image

# The PostgreSQL majors a deployment builds job images for (deploy/kubernetes/job-image/build.sh).
SUPPORTED_MAJORS = ("14", "15", "16", "17")


def _resources(
    cpu_request: str | None,
    memory_request: str | None,
    cpu_limit: str | None,
    memory_limit: str | None,
    storage_request: str | None = None,
    storage_limit: str | None = None,
) -> dict[str, dict[str, str]]:
    requests = {
        k: v for k, v in (("cpu", cpu_request), ("memory", memory_request), ("ephemeral-storage", storage_request)) if v
    }
    limits = {
        k: v for k, v in (("cpu", cpu_limit), ("memory", memory_limit), ("ephemeral-storage", storage_limit)) if v
    }
    return {"requests": requests, "limits": limits}


class ManifestSettings(BaseModel):
    """The platform configuration the manifests need."""

    service_account_name: str = Field(
        default="toygres-pipelines",
        description="Service account of job pods; annotated for Azure workload identity (blob access)",
    )
    job_images: dict[str, str] = Field(
        default={},
        description="Job image per PostgreSQL major, pinned by digest (@sha256:...) or a unique tag; a job for a "
        "major without one is refused at request time",
    )
    job_image_pull_secret: str | None = Field(default=None, description="imagePullSecret for the job images")
    postgres_images: dict[str, str] = Field(
        default={},
        description="Stock server image per PostgreSQL major, pinned like job_images; a major without one runs "
        "the job image of that major (the very build that restored the data: one Debian release, one glibc "
        "collation version)",
    )
    pg_durable_images: dict[str, str] = Field(
        default={}, description="pg_durable server image per major version, pinned like job_images"
    )
    pg_durable_pull_secret: str | None = Field(default=None, description="imagePullSecret for pg_durable images")
    storage_class: str | None = Field(default=None, description="StorageClass of instance volumes (None: default)")
    superuser: str = Field(default="postgres", description="Superuser of every instance")
    load_balancer_source_ranges: list[str] = Field(
        default=[],
        description="CIDRs allowed to reach public instances (Service loadBalancerSourceRanges); with none, public "
        "instances are refused unless allow_public_without_source_ranges",
    )
    tls_ca_secret: str | None = Field(
        default=None,
        description="kubernetes.io/tls Secret (tls.crt, tls.key) in each instance namespace holding the deployment's "
        "CA: it signs every instance certificate and connection strings by DNS name say sslmode=verify-full; "
        "None: self-signed certificates, sslmode=require",
    )
    allow_public_without_source_ranges: bool = Field(
        default=False,
        description="Let public instances open 5432 to the whole Internet when load_balancer_source_ranges is empty",
    )
    shm_size_limit: str = Field(default="1Gi", description="Size of the server's /dev/shm (memory-backed emptyDir)")
    postgres_termination_grace_seconds: int = Field(
        default=120, description="terminationGracePeriodSeconds of the server; its preStop hook runs a fast shutdown"
    )
    startup_timeout_seconds: int = Field(
        default=3600, description="How long the server may take to start (crash recovery) before liveness applies"
    )
    volume_mount_path: str = Field(default="/var/lib/postgresql/data", description="PVC mount; PGDATA is <this>/pgdata")
    run_as_user: int = Field(default=999, description="UID of server and job containers (the postgres images' user)")
    run_as_group: int = Field(default=999, description="GID of server and job containers")
    fs_group: int = Field(default=999, description="fsGroup of the pods (volume and secret files)")
    restore_fetch_user: int = Field(
        default=1001,
        description="UID of a restore's fetch container (the SAS, the age identity); never run_as_user, which runs "
        "its serve container (the image's code)",
    )
    restore_egress_cidrs: list[str] = Field(
        default=[],
        description="Where restore pods may connect besides DNS (TCP 443): blob storage's addresses, e.g. the storage "
        "account's private endpoint subnet. NetworkPolicy has no FQDNs; empty: DNS only (azcopy then fails)",
    )
    refuse_dangerous_images: bool = Field(
        default=False, description="Refuse images whose functions run COPY ... PROGRAM or use an untrusted language"
    )
    job_cpu_request: str | None = Field(default="250m", description="CPU request of job containers")
    job_memory_request: str | None = Field(default="512Mi", description="Memory request of job containers")
    job_cpu_limit: str | None = Field(default=None, description="CPU limit of job containers (None: none)")
    job_memory_limit: str | None = Field(default="2Gi", description="Memory limit of job containers")
    postgres_cpu_request: str | None = Field(default="250m", description="CPU request of the server container")
    postgres_memory_request: str | None = Field(default="512Mi", description="Memory request of the server")
    postgres_cpu_limit: str | None = Field(default=None, description="CPU limit of the server (None: none)")
    postgres_memory_limit: str | None = Field(default="2Gi", description="Memory limit of the server")
    scratch_size_limit: str | None = Field(default=None, description="sizeLimit of the job's scratch emptyDir")
    job_ephemeral_storage_request: str | None = Field(
        default="1Gi", description="ephemeral-storage request of job containers (scratch, /tmp, logs)"
    )
    job_ephemeral_storage_limit: str | None = Field(
        default="20Gi",
        description="ephemeral-storage limit of job containers: a job filling it is evicted and fails instead of "
        "filling the node (raise it for parallel mode, whose dump is on the scratch disk)",
    )
    backoff_limit: int = Field(default=2, description="Job backoffLimit: pod retries before the Job fails")
    job_ttl_seconds: int = Field(default=86400, description="Job ttlSecondsAfterFinished")
    age_identity_secret: str | None = Field(
        default=None,
        description="Secret (key `identities`: one or more age private keys) in each instance namespace, mounted "
        "read-only into restore Jobs only; never into backup Jobs",
    )

    archiver_image: str | None = Field(
        default=None,
        description="Image of the WAL archiver Deployment of each instance namespace (the project image: Python, "
        "pg_receivewal, zstd, age), pinned like job_images; None: no archivers (their instances are named by the "
        "wal_archivers sensor)",
    )
    archiver_memory_request: str | None = Field(
        default="256Mi",
        description="Memory request of the archiver pod: ~100 MiB for its Python process + ~11 MiB per archived "
        "instance (one pg_receivewal each; docs/pitr.md)",
    )
    archiver_memory_limit: str | None = Field(default="2Gi", description="Memory limit of the archiver pod")
    archiver_cpu_request: str | None = Field(default="50m", description="CPU request of the archiver pod")
    wal_slot_max_keep_mb: int = Field(
        default=1024,
        ge=64,
        description="max_slot_wal_keep_size of every server: WAL its archiver's slot may hold back while the archiver "
        "is down; past it the server drops that WAL (the archive reports the gap) instead of filling the volume",
    )

    @field_validator("archiver_image")
    @classmethod
    def _archiver_image_is_pinned(cls, value: str | None) -> str | None:
        if value is not None:
            check_pinned_image(value, "archiver_image")
        return value

    @field_validator("job_images", "postgres_images", "pg_durable_images")
    @classmethod
    def _images_are_pinned(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for major, image in value.items():
            if not re.fullmatch(r"\d{2}", major):
                raise ValueError(f"{info.field_name}: {major!r} must be a PostgreSQL major version such as '17'")
            check_pinned_image(image, f"{info.field_name}[{major!r}]")
        return value

    @field_validator("age_identity_secret")
    @classmethod
    def _identity_secret_is_a_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        refuse_pasted_identity(value, "age_identity_secret", "the name of the Secret holding the age identities")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
            # not repeated either: a wrong value here may still be part of a key
            raise ValueError(
                "age_identity_secret: must be a Secret name (a DNS-1123 label of at most 63 characters);"
                " the value is not repeated here"
            )
        return value

    @field_validator("load_balancer_source_ranges")
    @classmethod
    def _ranges_are_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as error:
                raise ValueError(f"load_balancer_source_ranges: {cidr!r} is not a CIDR ({error})") from error
        return value

    @property
    def job_resources(self) -> dict[str, dict[str, str]]:
        return _resources(
            self.job_cpu_request,
            self.job_memory_request,
            self.job_cpu_limit,
            self.job_memory_limit,
            self.job_ephemeral_storage_request,
            self.job_ephemeral_storage_limit,
        )

    @property
    def postgres_resources(self) -> dict[str, dict[str, str]]:
        return _resources(
            self.postgres_cpu_request, self.postgres_memory_request, self.postgres_cpu_limit, self.postgres_memory_limit
        )

    @property
    def archiver_resources(self) -> dict[str, dict[str, str]]:
        return _resources(self.archiver_cpu_request, self.archiver_memory_request, None, self.archiver_memory_limit)
