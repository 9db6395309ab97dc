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
    drill_run_canceled        a terminated drill run: scratch instance deleted, drill failed at once
    abandoned_drills          drills whose run ended without finishing: failed, scratch instance deleted
    weekly_drills             schedule -> restore_drill: each running instance once a week (automation/drills.py)
    backups_fresh, drills_fresh   asset checks on `fleet`, run by job check_freshness on freshness_checks
    retention                 job: apply the retention policy (dry_run by default in the launchpad)
    retention_daily           schedule -> retention with dry_run false (TOYGRES_RETENTION_CRON)

Settings: `settings.AutomationSettings`, read from TOYGRES_<FIELD> once when the code location
loads (`definitions.py`); `build_automation` makes every definition from them.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from toygres_pipelines.automation.drills import (
    abandoned_drills_sensor,
    drill_canceled_sensor,
    fleet,
    fleet_checks_after_runs_sensor,
    freshness_checks,
    freshness_job,
    freshness_schedule,
    weekly_drill_schedule,
)
from toygres_pipelines.automation.jobs import backup_image
from toygres_pipelines.automation.reconcile import reconcile_sensor
from toygres_pipelines.automation.schedules import nightly_schedule, retention_schedule
from toygres_pipelines.automation.sensors import request_sensors
from toygres_pipelines.automation.settings import AutomationSettings
from toygres_pipelines.automation.writeback import writeback_sensors
from toygres_pipelines.lifecycle.retention_job import retention_job


@dataclass(frozen=True)
class Automation:
    jobs: list[Any]
    assets: list[dg.AssetSpec]
    checks: list[dg.AssetChecksDefinition]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]

    def sensor(self, name: str) -> dg.SensorDefinition:
        return next(s for s in self.sensors if s.name == name)

    def schedule(self, name: str) -> dg.ScheduleDefinition:
        return next(s for s in self.schedules if s.name == name)


def build_automation(settings: AutomationSettings) -> Automation:
    retention = retention_job(settings.retention)
    checks = freshness_checks(settings)
    check_freshness = freshness_job(checks)
    return Automation(
        jobs=[backup_image, retention, check_freshness],
        assets=[fleet],
        checks=checks,
        schedules=[
            nightly_schedule(settings),
            retention_schedule(settings, retention),
            weekly_drill_schedule(settings),
            freshness_schedule(settings, check_freshness),
        ],
        sensors=[
            *request_sensors(settings),
            *writeback_sensors(settings),
            reconcile_sensor(settings),
            abandoned_drills_sensor(settings),
            drill_canceled_sensor(settings),
            fleet_checks_after_runs_sensor(settings, check_freshness),
        ],
    )


__all__ = ["Automation", "AutomationSettings", "build_automation"]
