"""Automation: the nightly schedule, the CMS request sensors, run-status write-back, the reconciler."""

from toygres_pipelines.automation.jobs import backup_image
from toygres_pipelines.automation.reconcile import reconcile_stuck_rows
from toygres_pipelines.automation.schedules import nightly_backups
from toygres_pipelines.automation.sensors import image_requests_sensor, restore_requests_sensor
from toygres_pipelines.automation.writeback import WRITEBACK_SENSORS

AUTOMATION_JOBS = [backup_image]
AUTOMATION_SCHEDULES = [nightly_backups]
AUTOMATION_SENSORS = [image_requests_sensor, restore_requests_sensor, *WRITEBACK_SENSORS, reconcile_stuck_rows]

__all__ = ["AUTOMATION_JOBS", "AUTOMATION_SCHEDULES", "AUTOMATION_SENSORS"]
