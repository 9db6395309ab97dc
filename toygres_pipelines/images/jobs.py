"""The job that schedules and sensors launch backups with."""

from typing import Any

import dagster as dg

from records.requests import BackupFields, ImageRequestFields
from toygres_pipelines.forms import run_config_values
from toygres_pipelines.images.assets import BackupConfig, image
from toygres_pipelines.shared.run_config import RunConfigLike, op_config_of, op_run_config
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


def backup_run_config(request: ImageRequestFields | BackupFields, **overrides: Any) -> dg.RunConfig:
    """The run config of a backup request; its image name travels as the partition key."""
    return backup_form_run_config(BackupConfig(**run_config_values(request, BackupFields, **overrides)))


def backup_form_run_config(form: BackupConfig) -> dg.RunConfig:
    """The run config of a filled launchpad form (Materialize of an `image` partition)."""
    return op_run_config(image.op, form)


def backup_config_of(run_config: RunConfigLike) -> dict[str, Any]:
    """What a launched backup run's config gives the `image` asset."""
    return op_config_of(run_config, image.op)
