"""Everything the restores domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.restores.jobs import restore_instance
from toygres_pipelines.restores.sensors import restore_requests_sensor
from toygres_pipelines.shared.settings import SharedSettings


def restores_definitions(settings: SharedSettings) -> dg.Definitions:
    """restore_instance and the restore request sensor."""
    return dg.Definitions(jobs=[restore_instance], sensors=[restore_requests_sensor(settings)])
