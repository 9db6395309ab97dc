"""The job that schedules and sensors launch backups with, and the tags every automated run carries."""

import dagster as dg

from records.requests import BackupFields, ImageRequestFields
from toygres_pipelines.forms import run_config_values
from toygres_pipelines.images.assets import image
from toygres_pipelines.restores.jobs import REQUEST_ID_TAG

KIND_TAG = "toygres/kind"
INSTANCE_TAG = "toygres/instance"
__all__ = ["INSTANCE_TAG", "KIND_TAG", "REQUEST_ID_TAG", "backup_image", "backup_run_config"]

backup_image = dg.define_asset_job(
    name="backup_image",
    selection=dg.AssetSelection.assets(image),  # partitions (`images`) come from the asset
    tags={KIND_TAG: "backup"},
    description="Back up one instance into one `image` partition (the partition key is the image name).",
)


def backup_run_config(request: ImageRequestFields) -> dict:
    """The run config of a backup request; its image name travels as the partition key."""
    return {"ops": {"image": {"config": run_config_values(request, BackupFields)}}}
