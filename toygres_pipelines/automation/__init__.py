"""Automation: the nightly schedule, the CMS request sensors, run-status write-back, the reconciler.

    backup_image              asset job over `image` (partitions `images`), tag toygres/kind=backup
    nightly_backups           schedule -> backup_image: one `<k8s_name>__nightly-<YYYYMMDD>` partition
                              and run per running instance; run key = partition key
    image_requests_sensor     image_requests pending -> accepted/rejected -> backup_image runs
    restore_requests_sensor   restore_requests pending -> accepted/rejected -> restore_instance runs
    request_run_started       run-status sensors: record the run id of a request, then settle
    run_succeeded_writeback     requests/images/instances when the run succeeds, fails or is
    run_failed_writeback        canceled (writeback.settle_run)
    run_canceled_writeback
    reconcile_stuck_rows      rows left creating/accepted by runs that ended without reporting

Environment (read when the code location loads):
    TOYGRES_NIGHTLY_CRON                "0 2 * * *"
    TOYGRES_NIGHTLY_TIMEZONE            "UTC" (also decides the date in the partition key)
    TOYGRES_SENSOR_INTERVAL_SECONDS     30   request sensors and run-status sensors
    TOYGRES_REQUEST_BATCH               50   pending requests claimed per evaluation
    TOYGRES_RELAUNCH_AFTER_SECONDS      120  accepted without a run this long -> emitted again
    TOYGRES_RECONCILE_INTERVAL_SECONDS  300
    TOYGRES_RECONCILE_GRACE_SECONDS     60   finished runs are left to the run-status sensors first
"""

from toygres_pipelines.automation.jobs import backup_image
from toygres_pipelines.automation.reconcile import reconcile_stuck_rows
from toygres_pipelines.automation.schedules import nightly_backups
from toygres_pipelines.automation.sensors import image_requests_sensor, restore_requests_sensor
from toygres_pipelines.automation.writeback import WRITEBACK_SENSORS

AUTOMATION_JOBS = [backup_image]
AUTOMATION_SCHEDULES = [nightly_backups]
AUTOMATION_SENSORS = [image_requests_sensor, restore_requests_sensor, *WRITEBACK_SENSORS, reconcile_stuck_rows]

__all__ = ["AUTOMATION_JOBS", "AUTOMATION_SCHEDULES", "AUTOMATION_SENSORS"]
