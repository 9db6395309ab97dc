"""Blobs of failed images that could not be removed when the backup failed (storage was down)."""

import dagster as dg

from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from records import ImageState


def purge_failed_image_blobs(cms: CMSResource, blob: BlobStorageResource) -> int:
    """Delete every blob left under a failed image's folder; returns how many were removed."""
    return sum(blob.delete_prefix(failed.blob_path) for failed in cms.list_images([ImageState.failed]))


@dg.op(description="Delete blobs left behind by failed backups")
def purge_failed_images(context: dg.OpExecutionContext, cms: CMSResource, blob: BlobStorageResource) -> None:
    removed = purge_failed_image_blobs(cms, blob)
    context.log.info(f"removed {removed} blob(s) of failed images")


@dg.job(description="Remove blobs that failed backups left behind", tags={"toygres/kind": "maintenance"})
def purge_failed_image_blobs_job():
    purge_failed_images()


purge_failed_image_blobs_hourly = dg.ScheduleDefinition(
    name="purge_failed_image_blobs_hourly",
    job=purge_failed_image_blobs_job,
    cron_schedule="17 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
