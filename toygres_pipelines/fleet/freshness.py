"""The fleet domain: asset `fleet` (the running instances) and its freshness checks, built from
the settings:

backups_fresh       asset checks on `fleet`: every running instance, offenders named, WARN or
drills_fresh        ERROR as configured (TOYGRES_*_FRESHNESS_*)
check_freshness     job running both checks; freshness_checks schedule (TOYGRES_FRESHNESS_CRON)
fleet_checks_after_runs  sensor: both checks after every successful backup, restore and drill
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from records import InstanceState
from records.freshness import (
    InstanceFreshness,
    InstanceStatus,
    backup_freshness,
    drill_freshness,
    fleet_instances,
    instance_status,
    offenders,
)
from records.states import ImageState
from resources.cms import CMSResource
from toygres_pipelines.fleet.settings import FleetSettings
from toygres_pipelines.shared import asset_keys
from toygres_pipelines.shared.tags import AFTER_RUN_TAG, BACKUP_KIND, CHECKS_KIND, DRILL_KIND, KIND_TAG, RESTORE_KIND

fleet = dg.AssetSpec(
    asset_keys.FLEET,
    group_name="images",
    description="The running instances in the CMS: what backups_fresh and drills_fresh judge. Nothing "
    "materializes it; its Checks tab is the fleet's backup and drill freshness.",
)
BACKUPS_FRESH = "backups_fresh"
DRILLS_FRESH = "drills_fresh"


def freshness_result(report: list[InstanceFreshness], severity: str, what: str) -> dg.AssetCheckResult:
    stale = offenders(report)
    rows = [r.model_dump(mode="json") for r in report]
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity(severity),
        description=(
            f"{len(stale)} of {len(report)} running instance(s) out of their {what} window: " + "; ".join(stale)
        )
        if stale
        else f"all {len(report)} running instance(s) within their {what} window",
        metadata={
            "offenders": dg.MetadataValue.text(", ".join(stale) or "none"),
            "stale_instances": dg.MetadataValue.int(len(stale)),
            "instances": dg.MetadataValue.json(rows),
        },
    )


FLEET_COLUMNS = (
    dg.TableColumn("instance", "string", description="k8s_name"),
    dg.TableColumn("status", "string", description="ok, new (within its grace period) or what is out of window"),
    dg.TableColumn("newest_image", "string", description="its newest ready image"),
    dg.TableColumn("image_age_hours", "float"),
    dg.TableColumn("last_drill", "string", description="when its last restore drill started (UTC)"),
    dg.TableColumn("drill_result", "string"),
    dg.TableColumn("recovery_seconds", "float", description="that drill's recovery time"),
)


def fleet_table(rows: list[InstanceStatus]) -> dg.TableMetadataValue:
    """Every running instance on one table: what `toygres-pipelines status` prints."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "instance": row.instance,
                    "status": "; ".join(row.problems) or ("new" if row.new else "ok"),
                    "newest_image": row.newest_image,
                    "image_age_hours": row.newest_image_age_hours,
                    "last_drill": f"{row.last_drill_started_at:%Y-%m-%d %H:%M}" if row.last_drill_started_at else None,
                    "drill_result": row.last_drill_result,
                    "recovery_seconds": row.last_drill_recovery_seconds,
                }
            )
            for row in rows
        ],
        schema=dg.TableSchema(columns=list(FLEET_COLUMNS)),
    )


def freshness_checks(settings: FleetSettings) -> list[dg.AssetChecksDefinition]:
    backup_window = timedelta(hours=settings.backup_freshness_hours)
    drill_window = timedelta(days=settings.drill_freshness_days)
    grace = timedelta(hours=settings.new_instance_grace_hours)

    @dg.asset_check(
        asset=fleet.key,
        name=BACKUPS_FRESH,
        description=f"Every running instance has a ready image younger than {settings.backup_freshness_hours} h "
        "(TOYGRES_BACKUP_FRESHNESS_HOURS); offenders named. An instance created less than "
        f"{settings.new_instance_grace_hours} h ago is new (TOYGRES_NEW_INSTANCE_GRACE_HOURS).",
    )
    def backups_fresh(cms: CMSResource) -> dg.AssetCheckResult:
        running, drills = cms.instances.list([InstanceState.running]), cms.drills.list()
        images, now = cms.images.list([ImageState.ready]), datetime.now(UTC)
        report = backup_freshness(fleet_instances(running, drills), images, now, backup_window, grace)
        result = freshness_result(report, settings.backup_freshness_severity, "backup")
        fleet = fleet_table(instance_status(running, images, drills, now, backup_window, drill_window, grace))
        return result._replace(metadata={**result.metadata, "fleet": fleet})

    @dg.asset_check(
        asset=fleet.key,
        name=DRILLS_FRESH,
        description=f"Every running instance had a successful restore drill in the last "
        f"{settings.drill_freshness_days} days (TOYGRES_DRILL_FRESHNESS_DAYS); offenders named.",
    )
    def drills_fresh(cms: CMSResource) -> dg.AssetCheckResult:
        report = drill_freshness(
            cms.instances.list([InstanceState.running]), cms.drills.list(), datetime.now(UTC), drill_window, grace
        )
        return freshness_result(report, settings.drill_freshness_severity, "drill")

    return [backups_fresh, drills_fresh]


def freshness_job(checks: list[dg.AssetChecksDefinition]):
    return dg.define_asset_job(
        name="check_freshness",
        selection=dg.AssetSelection.checks(*checks),
        tags={KIND_TAG: CHECKS_KIND},
        description="Evaluate backups_fresh and drills_fresh for every running instance.",
    )


FLEET_CHANGING_KINDS = (BACKUP_KIND, RESTORE_KIND, DRILL_KIND)


def fleet_checks_after_runs_sensor(settings: FleetSettings, job) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="fleet_checks_after_runs",
        run_status=dg.DagsterRunStatus.SUCCESS,
        request_job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Evaluates backups_fresh and drills_fresh after every successful backup, restore and drill "
        "(the freshness_checks schedule runs them hourly besides).",
    )
    def fleet_checks_after_runs(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        if run.tags.get(KIND_TAG) not in FLEET_CHANGING_KINDS:
            return dg.SkipReason(f"run {run.run_id} ({run.tags.get(KIND_TAG, 'untagged')}) does not change the fleet")
        return dg.RunRequest(
            job_name=job.name,
            run_key=f"fleet-after-{run.run_id}",
            tags={KIND_TAG: CHECKS_KIND, AFTER_RUN_TAG: run.run_id},
        )

    return fleet_checks_after_runs


def freshness_schedule(settings: FleetSettings, job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="freshness_checks",
        job=job,
        cron_schedule=settings.freshness_cron,
        execution_timezone=settings.nightly_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Evaluates backups_fresh and drills_fresh (TOYGRES_FRESHNESS_CRON).",
    )
