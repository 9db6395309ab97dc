"""The `image` asset: one dynamic partition per snapshot of an instance."""

import dagster as dg
from pydantic import Field

from records import ValidationFailed
from records.requests import BackupFields
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.backup import files_table, materialization_metadata, source_ref_for, take_image

IMAGE_PARTITIONS = "images"
VERIFIED_CHECK = "verified"
image_partitions = dg.DynamicPartitionsDefinition(name=IMAGE_PARTITIONS)


class BackupConfig(BackupFields, dg.Config):
    """The launchpad form of the `image` asset (the partition key is the image name)."""

    source_instance: str = Field(
        default="",
        description="k8s_name or id of the running instance to back up. Empty: the partition key's "
        "part before '__' (partition 'pagila-demo__manual-1' backs up 'pagila-demo').",
    )
    job_timeout_seconds: int = Field(default=3600, ge=5, description="Upper bound for the backup job, in seconds")


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
            description="Every file the manifest lists is in blob storage, byte-exact (sha256), and pg_restore "
            "reads every dump end to end. The image is ready only when this passes.",
        )
    ],
    description="A verified backup of a running instance in blob storage: roles, one pg_dump -Fc "
    "per database and a manifest. The partition key is the image name in the CMS.",
)
def image(
    context: dg.AssetExecutionContext,
    config: BackupConfig,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> dg.MaterializeResult:
    name = context.partition_key
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
        )
    except ValidationFailed as error:
        raise dg.Failure(description=f"Invalid backup request: {error}", allow_retries=False) from error
    context.log.info(
        f"image {name} ready: {outcome.report.total_bytes} bytes, manifest sha256 {outcome.report.manifest_sha256}"
    )
    return dg.MaterializeResult(
        metadata=materialization_metadata(outcome),
        # Reached only when verification passed (a failed one fails the run before this).
        check_results=[
            dg.AssetCheckResult(
                check_name=VERIFIED_CHECK,
                passed=True,
                metadata={
                    "files": files_table(outcome.report),
                    "manifest_sha256": dg.MetadataValue.text(outcome.report.manifest_sha256),
                },
            )
        ],
    )
