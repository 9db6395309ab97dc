"""The job that schedules and sensors launch backups with, and the tags every automated run carries."""

import dagster as dg

from toygres_pipelines.images.assets import image, image_partitions
from toygres_pipelines.restores.jobs import REQUEST_ID_TAG

KIND_TAG = "toygres/kind"
INSTANCE_TAG = "toygres/instance"
__all__ = ["INSTANCE_TAG", "KIND_TAG", "REQUEST_ID_TAG", "backup_image", "backup_run_config"]

backup_image = dg.define_asset_job(
    name="backup_image",
    selection=dg.AssetSelection.assets(image),
    partitions_def=image_partitions,
    tags={KIND_TAG: "backup"},
    description="Back up one instance into one `image` partition (the partition key is the image name).",
)


def backup_run_config(source_instance: str, description: str | None = None) -> dict:
    config: dict = {"source_instance": source_instance}
    if description is not None:
        config["description"] = description
    return {"ops": {"image": {"config": config}}}
