"""The job that schedules and sensors launch backups with."""

import dagster as dg

from records.requests import BackupFields, ImageRequestFields
from toygres_pipelines.forms import run_config_values
from toygres_pipelines.images.assets import image
from toygres_pipelines.shared.tags import BACKUP_KIND, KIND_TAG

backup_image = dg.define_asset_job(
    name="backup_image",
    selection=dg.AssetSelection.assets(image),  # partitions (`images`) come from the asset
    tags={KIND_TAG: BACKUP_KIND},
    # The one step runs in the run worker: a step process would import the code location and set
    # up the resources a second time (docs/benchmarks.md, orchestration overhead).
    executor_def=dg.in_process_executor,
    description="Back up one instance into one `image` partition (the partition key is the image name).",
)


def backup_run_config(request: ImageRequestFields) -> dict:
    """The run config of a backup request; its image name travels as the partition key."""
    return {"ops": {"image": {"config": run_config_values(request, BackupFields)}}}
