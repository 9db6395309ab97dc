"""What failed runs could not clean up themselves: blobs of failed images (storage was down),
staging containers of parallel-mode backups no run writes into any more, and jobs past their
timeout with their blob credentials (the run died, or the CMS was down)."""

import dagster as dg

from records import ImageState, LogSink
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.settings import ImagesSettings
from toygres_pipelines.shared.tags import KIND_TAG, MAINTENANCE_KIND


def purge_failed_image_blobs(cms: CMSResource, blob: BlobStorageResource) -> int:
    """Delete every blob left under a failed image's folder; returns how many were removed."""
    return sum(blob.delete_prefix(failed.blob_path) for failed in cms.images.list([ImageState.failed]))


def purge_orphan_staging(cms: CMSResource, blob: BlobStorageResource) -> int:
    """Delete the staging container of every image that is not `creating` (or not in the CMS):
    its run has settled it, or died; returns how many were removed."""
    removed = 0
    for image_id in blob.staging_image_ids():
        image = cms.images.get(image_id)
        if image is None or image.state is not ImageState.creating:
            blob.delete_staging(image_id)
            removed += 1
    return removed


def remove_stale_jobs(
    platform: PlatformResource, namespaces: set[str], grace_seconds: float, log: LogSink
) -> list[str]:
    """Jobs (job directories locally; Jobs and SAS Secrets on Kubernetes) past their timeout."""
    removed = platform.delete_stale_jobs(namespaces, grace_seconds)
    for name in removed:
        log(f"removed stale job {name}")
    return removed


@dg.op(description="Delete blobs left behind by failed backups")
def purge_failed_images(context: dg.OpExecutionContext, cms: CMSResource, blob: BlobStorageResource) -> None:
    removed = purge_failed_image_blobs(cms, blob)
    context.log.info(f"removed {removed} blob(s) of failed images")
    staged = purge_orphan_staging(cms, blob)
    context.log.info(f"removed {staged} staging container(s) of backups no run writes into")


def purge_stale_jobs_op(grace_seconds: float) -> dg.OpDefinition:
    """The op with the grace of the settings the code location loaded (never read again in the op)."""

    @dg.op(name="purge_stale_jobs", description="Delete jobs (and their blob credentials) past their timeout")
    def purge_stale_jobs(context: dg.OpExecutionContext, cms: CMSResource, platform: PlatformResource) -> None:
        namespaces = {instance.namespace for instance in cms.instances.list()}
        removed = remove_stale_jobs(platform, namespaces, grace_seconds, context.log.info)
        context.log.info(f"removed {len(removed)} stale job(s)")

    return purge_stale_jobs


def janitor_job(settings: ImagesSettings) -> dg.JobDefinition:
    purge_stale_jobs = purge_stale_jobs_op(settings.stale_job_grace_seconds)

    @dg.job(
        description=(
            "Remove what failed runs left behind: blobs and staging containers of failed backups, jobs past "
            "their timeout"
        ),
        tags={KIND_TAG: MAINTENANCE_KIND},
    )
    def purge_failed_image_blobs_job():
        purge_failed_images()
        purge_stale_jobs()

    return purge_failed_image_blobs_job


def janitor_schedule(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="purge_failed_image_blobs_hourly",
        job=job,
        cron_schedule="17 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
