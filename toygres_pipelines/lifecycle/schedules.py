"""`retention_daily`: the retention job, not dry, on TOYGRES_RETENTION_CRON."""

import dagster as dg

from toygres_pipelines.lifecycle.retention_job import retention_run_config
from toygres_pipelines.lifecycle.settings import LifecycleSettings


def retention_schedule(settings: LifecycleSettings, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """The daily retention run: not dry (the launchpad's default is), so expired images go."""
    return dg.ScheduleDefinition(
        name="retention_daily",
        job=job,
        cron_schedule=settings.retention_cron,
        execution_timezone=settings.nightly_timezone,
        run_config=retention_run_config(dry_run=False),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every day: delete the images the retention policy no longer keeps (TOYGRES_RETENTION_*); "
        "preview with a dry_run launch of the `retention` job.",
    )
