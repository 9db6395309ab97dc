"""Taking an image of a running instance: the steps behind the `image` asset."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import dagster as dg
from pydantic import BaseModel, SecretStr

from records import (
    BackupManifest,
    Image,
    ImageState,
    Instance,
    InstanceRef,
    InstanceState,
    LogSink,
    ValidationFailed,
    shown,
    validate_image_name,
)
from records.job_scripts import BackupEnv
from records.parallel import SINGLE_STREAM, validate_parallel_jobs
from records.units import human_bytes
from resources.blob import MANIFEST_NAME, BlobStorageResource
from resources.cms import CMSResource, InvalidTransition
from resources.platform.base import JobKind, JobSpec, PlatformResource
from toygres_pipelines.images.contents import databases_table
from toygres_pipelines.images.verification import VerificationReport, verify_image

PARTITION_SOURCE_SEPARATOR = "__"
# The backup script hashes each range of this size as it streams; verification reads a few back.
CHECK_CHUNK_BYTES = 4 * 2**20
# pg_dump -Z of every backup, chosen from the gzip table in docs/benchmarks.md: level 1 dumps
# about twice as fast as the default 6 for a few percent more bytes.
DEFAULT_DUMP_COMPRESSION = "1"
# From PostgreSQL 16 on the job image's pg_dump has zstd, faster than gzip 1 and smaller than gzip 6.
ZSTD_FROM_MAJOR = 16
ZSTD_DUMP_COMPRESSION = "zstd:1"


def dump_compression(postgres_version: str) -> str:
    """pg_dump -Z for a source of this major (the job image runs the same major's pg_dump)."""
    major = int(postgres_version.split(".")[0])
    return ZSTD_DUMP_COMPRESSION if major >= ZSTD_FROM_MAJOR else DEFAULT_DUMP_COMPRESSION


class BackupOutcome(BaseModel):
    image: Image
    report: VerificationReport
    seconds: float
    manifest: BackupManifest | None = None


def source_ref_for(image_name: str, configured_source: str) -> str:
    """The source instance: configured, or the partition key's part before '__'."""
    if configured_source:
        return configured_source
    if PARTITION_SOURCE_SEPARATOR in image_name:
        return image_name.split(PARTITION_SOURCE_SEPARATOR, 1)[0]
    raise ValidationFailed(
        "source_instance",
        f"required: set it in the run config, or name the partition '<instance>{PARTITION_SOURCE_SEPARATOR}<suffix>'",
    )


def running_source(cms: CMSResource, platform: PlatformResource, ref: str) -> Instance:
    """The instance to back up: in the CMS and running, in a namespace this deployment serves, of a
    PostgreSQL major it has a job image for. Every entry point (asset, request sensor, CLI, nightly
    schedule) checks this before any image row exists."""
    return check_running_source(platform, source_in_cms(cms, ref), ref)


def source_in_cms(cms: CMSResource, ref: str) -> Instance:
    """`running_source`'s rules the CMS alone answers (the run coordinator checks these at submit)."""
    instance = cms.instances.find(ref)
    if instance is None:
        raise ValidationFailed("source_instance", f"no instance {shown(ref)} in the CMS")
    if instance.state is not InstanceState.running:
        raise ValidationFailed("source_instance", f"instance {shown(ref)} is {instance.state}, it must be running")
    return instance


def check_running_source(platform: PlatformResource, instance: Instance, ref: str) -> Instance:
    """`running_source`'s rules on an instance row already read (the nightly schedule reads them all at once)."""
    if instance.state is not InstanceState.running:
        raise ValidationFailed("source_instance", f"instance {shown(ref)} is {instance.state}, it must be running")
    try:
        platform.resolve_namespace(instance.namespace)
    except ValidationFailed as error:
        raise ValidationFailed(
            "source_instance",
            f"instance {instance.k8s_name!r} is in namespace {instance.namespace!r},"
            f" which this deployment does not serve ({error.rule})",
        ) from None
    platform.check_postgres_version(instance.postgres_version, "source_instance", f"instance {instance.k8s_name!r}")
    return instance


def check_name_free(cms: CMSResource, name: str, field: str) -> None:
    """A live image (anything but failed or deleted) already has this name."""
    existing = cms.images.find(name)
    if existing is not None and existing.name == name and existing.state not in (ImageState.failed, ImageState.deleted):
        raise ValidationFailed(field, f"{shown(name)} is already used by image {existing.id} ({existing.state})")


def image_prefix(image_id: uuid.UUID) -> str:
    return f"images/{image_id}"


# A single-stream backup's grant names each file ahead: the roles, the manifest and one dump per
# database, databases/001.dump up to this many (backup.sh refuses an instance with more, before
# dumping, and says to use parallel mode).
MAX_SINGLE_STREAM_DATABASES = 1000


def backup_grant(
    blob: BlobStorageResource,
    prefix: str,
    timeout_seconds: int,
    parallel_jobs: int,
    staging_id: uuid.UUID | None = None,
) -> SecretStr:
    """Create + write SAS, no read, list or delete (docs/security.md): a single-stream backup's
    for its image's own file names under `prefix`; a parallel one's (pg_dump -Fd's names are
    known to nobody ahead) for the staging container of `staging_id` only."""
    if parallel_jobs > SINGLE_STREAM:
        if staging_id is None:
            raise RuntimeError("a parallel-mode backup writes into a staging container: give its image id")
        return blob.staging_grant(staging_id, timeout_seconds)
    names = ["globals.sql", MANIFEST_NAME]
    names += [f"databases/{index:03d}.dump" for index in range(1, MAX_SINGLE_STREAM_DATABASES + 1)]
    return blob.write_grant(prefix, names, timeout_seconds)


def backup_job_spec(
    image: Image,
    source: Instance,
    blob: BlobStorageResource,
    timeout_seconds: int,
    age_recipient: str | None = None,
    parallel_jobs: int = SINGLE_STREAM,
) -> JobSpec:
    return JobSpec(
        kind=JobKind.backup,
        name=f"backup-{image.id}",
        script="backup.sh",
        instance=InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace),
        env=BackupEnv.of_source(
            source,
            # a parallel backup writes into its staging container; the run copies it into the image
            blob_url=(
                blob.staging_url(image.id) if parallel_jobs > SINGLE_STREAM else blob.folder_url(image.blob_path)
            ),
            transfer_stall_seconds=blob.transfer_stall_seconds,
            age_recipient=age_recipient,
            IMAGE_NAME=image.name,
            PARALLEL_JOBS=parallel_jobs if parallel_jobs > SINGLE_STREAM else None,
            CHECK_CHUNK_BYTES=CHECK_CHUNK_BYTES,
            DUMP_COMPRESSION=dump_compression(source.postgres_version),
        ).env(),
        blob_sas=backup_grant(blob, image.blob_path, timeout_seconds, parallel_jobs, image.id),
        labels={"toygres/image-id": str(image.id), "toygres/instance": source.k8s_name},
        timeout_seconds=timeout_seconds,
    )


def check_backup_request(cms: CMSResource, name: str, source_ref: str, parallel_jobs: int) -> Instance:
    """A new image's rules that need no platform: its name, parallel_jobs and the source in the CMS.
    take_image adds the platform's; the run coordinator applies these when the run is submitted."""
    validate_image_name(name, field="image name (partition key)")
    check_name_free(cms, name, field="image name (partition key)")
    validate_parallel_jobs(parallel_jobs)
    return source_in_cms(cms, source_ref)


def take_image(
    *,
    name: str,
    source_ref: str,
    description: str | None,
    run_id: str,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    log: LogSink,
    job_timeout_seconds: int,
    parallel_jobs: int = SINGLE_STREAM,
) -> BackupOutcome:
    """Reserve the image row, run the backup job, verify the blobs, mark the image ready.

    Validation errors raise before any row exists. Any failure before the image is ready
    (including the run being terminated) marks the row failed with the reason and removes the
    partial blobs. Once the image is ready nothing can fail the backup: a job that cannot be
    removed is logged and left to the janitor.
    """
    source = check_running_source(platform, check_backup_request(cms, name, source_ref, parallel_jobs), source_ref)
    image_id = uuid.uuid4()
    image = cms.images.reserve(
        image_id=image_id,
        name=name,
        description=description,
        source=source,
        blob_storage_url=blob.storage_url,
        blob_container=blob.container,
        blob_path=image_prefix(image_id),
        run_id=run_id,
    )
    started = time.monotonic()
    ref = InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace)
    job_name = None
    staged = parallel_jobs > SINGLE_STREAM
    try:
        cms.images.set_password(image.id, platform.read_instance_password(ref))
        blob.check_reachable()
        if staged:
            blob.create_staging(image.id)
        spec = backup_job_spec(image, source, blob, job_timeout_seconds, platform.age_recipient, parallel_jobs)
        job_name = spec.name
        platform.run_job(spec, log)
        if staged:
            copied = blob.promote_staging(image.id, image.blob_path)
            log(f"copied {copied} file(s) from the backup's staging container into {image.blob_path}")
        # What the job proved while streaming, plus sizes and sampled ranges: no second full transfer
        manifest, report = verify_image(blob, image.blob_path, log=log, full=False)
        if manifest.image_name != name or manifest.source_instance != source.k8s_name:
            raise RuntimeError(
                f"manifest describes {manifest.image_name!r} of {manifest.source_instance!r},"
                f" expected {name!r} of {source.k8s_name!r}"
            )
        stored_for = manifest.encryption.recipient if manifest.encryption else None
        if stored_for != platform.age_recipient:
            raise RuntimeError(
                f"manifest says the files are encrypted for {stored_for or 'nobody (plaintext)'},"
                f" this deployment encrypts for {platform.age_recipient or 'nobody'}"
            )
        ready = cms.images.transition(
            image.id,
            ImageState.ready,
            run_id=run_id,
            reason="backup verified",
            backup_size_bytes=report.total_bytes,
            backup_checksum=report.manifest_sha256,
            encryption_recipient=manifest.encryption.recipient if manifest.encryption else None,
        )
    except BaseException as error:
        try:
            fail_image(cms, blob, image, reason=describe_failure(error), run_id=run_id, log=log)
        finally:
            # Even when the CMS is unreachable: the job (and its SAS) must not outlive the run.
            if job_name is not None:
                _quietly(lambda: platform.delete_job(job_name, source.namespace), log)
            if staged:
                _quietly(lambda: blob.delete_staging(image.id), log, then="the janitor removes it")
        raise
    _quietly(lambda: platform.delete_job(spec.name, source.namespace), log, then="the janitor removes it")
    if staged:
        _quietly(lambda: blob.delete_staging(image.id), log, then="the janitor removes it")
    return BackupOutcome(image=ready, report=report, seconds=time.monotonic() - started, manifest=manifest)


def describe_failure(error: BaseException) -> str:
    if isinstance(error, (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
        return "the run was terminated during the backup"
    text = str(error) or type(error).__name__
    return text[:4000]


BLOBS_REMOVABLE = (ImageState.failed, ImageState.deleting)


def fail_image(
    cms: CMSResource,
    blob: BlobStorageResource,
    image: Image,
    *,
    reason: str,
    run_id: str | None,
    log: LogSink,
) -> None:
    """Mark the image failed (if it is still creating) and remove whatever reached blob storage.

    The one place that decides whether a failure may delete an image's blobs: only when the
    row is (or was just made) failed or deleting. A ready image keeps every blob, whatever
    failed after it became ready; an unreachable CMS keeps them too (the reconciler settles
    the row later).
    """
    current = cms.images.get(image.id)
    if current is not None and current.state is ImageState.creating:
        try:
            current = cms.images.transition(
                image.id, ImageState.failed, reason=reason, run_id=run_id, expected=ImageState.creating
            )
        except InvalidTransition:  # another writer settled it first (e.g. it became ready)
            current = cms.images.get(image.id)
    if current is None or current.state not in BLOBS_REMOVABLE:
        state = current.state if current is not None else "gone from the CMS"
        log(f"image {image.id} is {state}: its blobs are kept ({reason[:300]})")
        return
    try:
        removed = blob.delete_prefix(image.blob_path)
        if removed:
            log(f"removed {removed} partial blob(s) under {image.blob_path}")
    except Exception as error:  # noqa: BLE001 - blob storage may be what failed
        log(f"could not remove blobs under {image.blob_path} now ({error}); the janitor sensor retries")


def _quietly(action: Callable[[], None], log: LogSink, then: str = "") -> None:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - cleanup must not hide the original failure
        log(f"cleanup step failed: {error}" + (f"; {then}" if then else ""))


FILES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("path", "string", description="blob name under the image's blob path"),
        dg.TableColumn("database", "string", description="the database the dump holds (empty: the roles)"),
        dg.TableColumn("kind", "string"),
        dg.TableColumn("size", "string"),
        dg.TableColumn("size_bytes", "int"),
        dg.TableColumn("sha256", "string"),
        dg.TableColumn("verified", "string"),
    ]
)


def files_table(report: VerificationReport) -> dg.MetadataValue:
    """Each file with the database it holds, its size (human and raw) and what verification proved."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "path": f.path,
                    "database": f.database or "",
                    "kind": f.kind,
                    "size": human_bytes(f.size_bytes),
                    "size_bytes": f.size_bytes,
                    "sha256": f.sha256,
                    "verified": f.verdict,
                }
            )
            for f in report.files
        ],
        schema=FILES_SCHEMA,
    )


def materialization_metadata(outcome: BackupOutcome) -> dict[str, dg.MetadataValue]:
    image = outcome.image
    seconds = max(outcome.seconds, 1e-6)
    return {
        "image_id": dg.MetadataValue.text(str(image.id)),
        "source_instance": dg.MetadataValue.text(f"{image.source_namespace}/{image.source_k8s_name}"),
        "size": dg.MetadataValue.text(human_bytes(outcome.report.total_bytes)),
        "bytes": dg.MetadataValue.int(outcome.report.total_bytes),
        "manifest_sha256": dg.MetadataValue.text(outcome.report.manifest_sha256),
        "files": files_table(outcome.report),
        "duration_seconds": dg.MetadataValue.float(round(outcome.seconds, 3)),
        "throughput_mib_per_second": dg.MetadataValue.float(round(outcome.report.total_bytes / seconds / 2**20, 3)),
        "blob_url": dg.MetadataValue.url(f"{image.blob_storage_url}/{image.blob_container}/{image.blob_path}"),
        "postgres_version": dg.MetadataValue.text(image.postgres_version),
        "encryption": dg.MetadataValue.text(
            f"age, recipient {image.encryption_recipient}" if image.encryption_recipient else "none"
        ),
        **({"databases": databases_table(outcome.manifest)} if outcome.manifest else {}),
    }
