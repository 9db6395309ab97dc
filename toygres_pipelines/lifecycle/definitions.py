"""Everything the lifecycle domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.lifecycle.jobs import delete_image_job, delete_instance_job
from toygres_pipelines.lifecycle.retention_job import retention_job
from toygres_pipelines.lifecycle.schedules import retention_schedule
from toygres_pipelines.lifecycle.settings import LifecycleSettings


def lifecycle_definitions(settings: LifecycleSettings) -> dg.Definitions:
    """retention (+ retention_daily), delete_image, delete_instance."""
    retention = retention_job(settings.retention)
    return dg.Definitions(
        jobs=[retention, delete_image_job, delete_instance_job], schedules=[retention_schedule(settings, retention)]
    )
