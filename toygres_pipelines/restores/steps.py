"""Helpers behind the restore ops: connection strings, the restore job spec, cleanup."""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import SecretStr

from records import (
    BackupManifest,
    Endpoints,
    ImageState,
    Instance,
    InstanceRef,
    InstanceState,
    LogSink,
)
from records.job_scripts import RestoreFetchEnv, RestoreServeEnv, job_env
from records.tenant_sessions import tenant_session_options
from resources.blob import MANIFEST_NAME, BlobStorageResource
from resources.cms import CMSError, CMSResource
from resources.platform.base import JobFailed, JobKind, JobSpec, PlatformResource, RestoreRoles
from toygres_pipelines.images.verification import ImageCorrupt, read_manifest, sha256sums
from toygres_pipelines.restores.config import RestorePlan
from toygres_pipelines.shared.connections import connection_string


def instance_ref(instance: Instance) -> InstanceRef:
    return InstanceRef(k8s_name=instance.k8s_name, namespace=instance.namespace)


def restore_job_name(instance: Instance) -> str:
    return f"restore-{instance.k8s_name}"


def check_url(endpoints: Endpoints, password: SecretStr) -> str:
    """Where the restore checks that the instance answers: the public address, or the in-cluster
    one when the public address is closed to the cluster itself (check_host)."""
    host = endpoints.check_host or endpoints.external_ip or endpoints.host
    return connection_string(host, endpoints.port, password, sslmode=endpoints.sslmode)


def files_to_download(manifest: BackupManifest, databases: list[str] | None) -> BackupManifest:
    """The manifest narrowed to what the job downloads: every file, or the roles and the chosen databases."""
    if databases is None:
        return manifest
    wanted = set(databases)
    return manifest.model_copy(
        update={"files": [f for f in manifest.files if f.kind != "database" or f.database in wanted]}
    )


def downloads(manifest: BackupManifest, databases: list[str] | None) -> dict[str, Any]:
    """The fetch role's variables of what it downloads and restores. The chosen databases' names
    travel as a JSON array (ASCII, any name exactly; the script reads it with jq)."""
    return {
        "BACKUP_SHA256SUMS": sums_env(sha256sums(files_to_download(manifest, databases))),
        "RESTORE_DATABASES": databases,
    }


def restore_job_env(manifest: BackupManifest, databases: list[str] | None) -> dict[str, str]:
    """`downloads` as the script reads them."""
    return RestoreFetchEnv.partial_env(**downloads(manifest, databases))


def restore_roles_env(
    plan: RestorePlan, manifest: BackupManifest, blob: BlobStorageResource
) -> tuple[RestoreFetchEnv, RestoreServeEnv]:
    """Each role's variables: what the fetch role downloads and how serve restores it."""
    fetch = RestoreFetchEnv(
        BLOB_URL=blob.folder_url(plan.blob_path),
        MANIFEST_SHA256=plan.manifest_sha256,
        **downloads(manifest, plan.selected_databases),
        # initdb's major version must be the server's (the target's: a restore may upgrade):
        # the platform picks the job image (Kubernetes) or the binaries (local) by it.
        POSTGRES_VERSION=plan.postgres_version,
        TRANSFER_STALL_SECONDS=blob.transfer_stall_seconds,
    )
    # A parallel-mode image restores with as many pg_restore jobs as it was dumped with.
    serve = RestoreServeEnv(RESTORE_JOBS=manifest.parallel_jobs if manifest.parallel_jobs > 1 else None)
    return fetch, serve


def restore_grant(
    blob: BlobStorageResource, prefix: str, manifest: BackupManifest, databases: list[str] | None, timeout_seconds: int
) -> SecretStr:
    """Read-only SAS for manifest.json and each file the job downloads, of this image only, for
    the job's lifetime plus a margin: nothing else of the container, no listing."""
    names = [MANIFEST_NAME, *(f.path for f in files_to_download(manifest, databases).files)]
    return blob.read_grant(prefix, names, timeout_seconds)


# Well below the 128 KiB execve allows one environment string: a parallel image of thousands of
# tables lists more files than that; restore.sh then reads the same list from the verified manifest.
SUMS_ENV_LIMIT = 64 * 1024


def sums_env(sums: str) -> str | None:
    return sums if len(sums.encode()) <= SUMS_ENV_LIMIT else None


def restore_job_spec(plan: RestorePlan, instance: Instance, blob: BlobStorageResource, timeout_seconds: int) -> JobSpec:
    """Verifies the manifest against the CMS row first; the job verifies every file again."""
    manifest, _ = verify_manifest_only(blob, plan)
    return JobSpec(
        kind=JobKind.restore,
        name=restore_job_name(instance),
        script="restore.sh",
        instance=instance_ref(instance),
        env=job_env(*restore_roles_env(plan, manifest, blob)),
        blob_sas=restore_grant(blob, plan.blob_path, manifest, plan.selected_databases, timeout_seconds),
        labels={"toygres/instance": instance.k8s_name, "toygres/image-id": str(plan.image_id)},
        timeout_seconds=timeout_seconds,
    )


def verify_manifest_only(blob: BlobStorageResource, plan: RestorePlan) -> tuple[BackupManifest, str]:
    return read_manifest(blob, plan.blob_path, plan.manifest_sha256)


def dangerous_content(log_lines: list[str]) -> list[str]:
    """What the serve role's scan of the archives reported (RestoreRoles.finding_prefix lines)."""
    marker = RestoreRoles.finding_prefix
    return [line.split(marker, 1)[1] for line in log_lines if marker in line]


CHECKSUM_MISMATCH = "ERROR: checksum mismatch"  # restore.sh's message (exit 3) when a file's sha256 differs


def verification_failure(error: BaseException) -> str | None:
    """Why the image's bytes failed verification, when that is what `error` says; else None."""
    if isinstance(error, ImageCorrupt):
        return str(error)
    if isinstance(error, JobFailed):
        return next((line for line in error.result.log_tail if CHECKSUM_MISMATCH in line), None)
    return None


def mark_image_corrupt(cms: CMSResource, plan: RestorePlan, why: str, run_id: str, log: LogSink) -> None:
    """A ready image whose bytes failed verification is never offered again until re-verified."""
    try:
        cms.images.transition(
            plan.image_id,
            ImageState.corrupt,
            run_id=run_id,
            expected=ImageState.ready,
            reason=f"failed verification at restore: {why}"[:4000],
            error_message=f"failed verification at restore: {why}"[:4000],
        )
        log(f"image {plan.image_name} marked corrupt: {why}")
    except CMSError as error:  # another run got there first, or it is being deleted
        log(f"image {plan.image_name} not marked corrupt: {error}")


def check_connection(connection_url: str, timeout_seconds: int) -> str:
    with psycopg.connect(
        connection_url, connect_timeout=timeout_seconds, options=tenant_session_options(timeout_seconds * 1000)
    ) as conn:
        row = conn.execute("SELECT pg_catalog.version()").fetchone()
    if row is None:
        raise RuntimeError("SELECT version() returned no row")
    return str(row[0])


def clean_up_failed_restore(
    cms: CMSResource, platform: PlatformResource, instance: Instance, reason: str, log: LogSink
) -> None:
    """Remove what the run created and leave the instance failed, its DNS name freed."""
    ref = instance_ref(instance)
    for action, what in (
        (lambda: platform.delete_job(restore_job_name(instance), instance.namespace), "restore job"),
        (lambda: platform.delete_instance(ref), "server, service, config, secret and volume"),
    ):
        try:
            action()
        except Exception as error:  # noqa: BLE001 - keep cleaning; say what is left
            log(f"cleanup: could not remove the {what} of {instance.k8s_name}: {error}")
    current = cms.instances.get(instance.id)
    if current is not None and current.state in (InstanceState.creating, InstanceState.running):
        cms.instances.transition(instance.id, InstanceState.failed, reason=reason[:4000])
    log(f"cleanup: instance {instance.k8s_name} marked failed: {reason[:300]}")
