"""The `image` asset: one dynamic partition per snapshot of an instance.

A partition means an image: materializing one whose image is already `ready` verifies and
reports that image (nothing is taken or changed), and a request refused before any image row
exists removes the partition it was launched for, so a typo leaves no red partition behind.
"""

import time
import warnings

import dagster as dg
from pydantic import Field

from records import Image, ImageState, ValidationFailed
from records.bounds import MAX_JOB_SECONDS
from records.requests import BackupFields
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.backup import (
    BackupOutcome,
    files_table,
    materialization_metadata,
    source_ref_for,
    take_image,
)
from toygres_pipelines.images.verification import ImageCorrupt, verify_image
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS, image_partitions

# Partitioned asset checks are a preview feature of Dagster 1.13; `verified` relies on it knowingly.
warnings.filterwarnings(
    "ignore", message=r"Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

BACKUP_TIMEOUT_BOUNDS = (5, MAX_JOB_SECONDS)
VERIFIED_CHECK = "verified"


class BackupConfig(BackupFields, dg.Config):
    """The launchpad form of the `image` asset (the partition key is the image name)."""

    source_instance: str = Field(
        default="",
        description="k8s_name or id of the running instance to back up. Empty: the partition key's "
        "part before '__' (partition 'pagila-demo__manual-1' backs up 'pagila-demo').",
    )
    job_timeout_seconds: int = Field(
        default=3600,
        ge=BACKUP_TIMEOUT_BOUNDS[0],
        le=BACKUP_TIMEOUT_BOUNDS[1],
        description=f"Upper bound for the backup job, {BACKUP_TIMEOUT_BOUNDS[0]}-{BACKUP_TIMEOUT_BOUNDS[1]} seconds",
    )


@dg.asset(
    partitions_def=image_partitions,
    group_name="images",
    kinds={"postgres", "azure"},
    # Every backup, however launched (UI, schedule, sensor), takes a slot of this pool.
    pool="toygres-backup",
    check_specs=[
        dg.AssetCheckSpec(
            VERIFIED_CHECK,
            asset="image",
            # Per partition: one image's verification says nothing of another's.
            partitions_def=image_partitions,
            description="Every file the manifest lists is in blob storage. After a backup: the archive reader "
            "read every block of every dump while it streamed, blob storage's sizes match and sampled ranges read "
            "back match the stream's hashes. A ready partition materialized again (and reverify_image): every byte "
            "re-read, sha256 and pg_restore end to end. The image is ready only when this passes; its `method` "
            "says which.",
        )
    ],
    description="A verified backup of a running instance in blob storage: roles, one pg_dump -Fc "
    "per database (parallel mode: pg_dump -Fd -j N) and a manifest. The partition key is the image name in the CMS.",
)
def image(
    context: dg.AssetExecutionContext,
    config: BackupConfig,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> dg.MaterializeResult:
    name = context.partition_key
    existing = image_named(cms, name)
    if existing is not None and existing.state is ImageState.ready:
        return report_ready_image(context, existing, cms, blob)
    try:
        source_ref = source_ref_for(name, config.source_instance)
        outcome = take_image(
            name=name,
            source_ref=source_ref,
            description=config.description,
            run_id=context.run_id,
            cms=cms,
            blob=blob,
            platform=platform,
            log=context.log.info,
            job_timeout_seconds=config.job_timeout_seconds,
            parallel_jobs=config.parallel_jobs,
        )
    except ValidationFailed as error:
        note = ""
        if image_named(cms, name) is None:
            context.instance.delete_dynamic_partition(IMAGE_PARTITIONS, name)
            note = f"; partition {name!r} removed: no image row has this name"
        raise dg.Failure(description=f"Invalid backup request: {error}{note}", allow_retries=False) from error
    context.log.info(
        f"image {name} ready: {outcome.report.total_bytes} bytes, manifest sha256 {outcome.report.manifest_sha256}"
    )
    return verified_result(outcome)


def image_named(cms: CMSResource, name: str) -> Image | None:
    """The image row of this name (the live one, else the newest), if any."""
    found = cms.images.find(name)
    return found if found is not None and found.name == name else None


def report_ready_image(
    context: dg.AssetExecutionContext, ready: Image, cms: CMSResource, blob: BlobStorageResource
) -> dg.MaterializeResult:
    """The partition's image is ready: verify its bytes again (read only) and report it as it is.
    Bytes that no longer verify make it corrupt, like a failed verification at restore."""
    started = time.monotonic()
    try:
        manifest, report = verify_image(blob, ready.blob_path, expected_manifest_sha256=ready.backup_checksum)
    except ImageCorrupt as error:
        why = f"failed verification when its partition was materialized again: {error}"[:4000]
        cms.images.transition(
            ready.id,
            ImageState.corrupt,
            run_id=context.run_id,
            expected=ImageState.ready,
            reason=why,
            error_message=why,
        )
        raise dg.Failure(
            description=f"image {ready.name} was ready but its bytes no longer verify: marked corrupt ({error})",
            allow_retries=False,
        ) from error
    context.log.info(
        f"image {ready.name} ({ready.id}) is already ready and verifies: reported as it is, no new backup taken"
    )
    outcome = BackupOutcome(image=ready, report=report, seconds=time.monotonic() - started, manifest=manifest)
    return verified_result(outcome)


def verified_result(outcome: BackupOutcome) -> dg.MaterializeResult:
    """The image's metadata and its `verified` check: reached only when verification passed (a
    failed one fails the run before this)."""
    return dg.MaterializeResult(
        metadata=materialization_metadata(outcome),
        check_results=[
            dg.AssetCheckResult(
                check_name=VERIFIED_CHECK,
                passed=True,
                metadata={
                    "files": files_table(outcome.report),
                    "manifest_sha256": dg.MetadataValue.text(outcome.report.manifest_sha256),
                    "method": dg.MetadataValue.text(outcome.report.method),
                },
            )
        ],
    )
