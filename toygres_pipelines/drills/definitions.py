"""Everything the drills domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.drills.checks import restorable, size_plausible
from toygres_pipelines.drills.jobs import restore_drill
from toygres_pipelines.drills.pitr_drill import pitr_drill_job, weekly_pitr_drills
from toygres_pipelines.drills.schedules import weekly_drill_schedule
from toygres_pipelines.drills.sensors import abandoned_drills_sensor, drill_canceled_sensor
from toygres_pipelines.drills.settings import DrillsSettings


def drills_definitions(settings: DrillsSettings) -> dg.Definitions:
    """restore_drill, weekly_drills, drill_run_canceled, abandoned_drills, the image checks; pitr_drill,
    weekly_pitr_drills."""
    return dg.Definitions(
        asset_checks=[restorable, size_plausible],
        jobs=[restore_drill, pitr_drill_job],
        schedules=[weekly_drill_schedule(settings), weekly_pitr_drills],
        sensors=[abandoned_drills_sensor(settings), drill_canceled_sensor(settings)],
    )
