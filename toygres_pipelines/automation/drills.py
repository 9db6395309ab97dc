"""Drill automation, built from the settings:

weekly_drills       schedule (TOYGRES_DRILL_CRON, daily): the running instances whose drill day
                    (records.freshness.drill_weekday) is today, each its newest ready image ->
                    restore_drill; the restore pool (`toygres-restore`) limits how many run at once
backups_fresh       asset checks on `image` (not partitioned): every running instance, offenders
drills_fresh        named, WARN or ERROR as configured (TOYGRES_*_FRESHNESS_*)
check_freshness     job running both checks; freshness_checks schedule (TOYGRES_FRESHNESS_CRON)
abandoned_drills    sensor: drills whose run ended without finishing: failed, scratch deleted
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from records import InstanceState, ValidationFailed
from records.freshness import (
    InstanceFreshness,
    backup_freshness,
    drill_freshness,
    due_drills,
    fleet_instances,
    offenders,
)
from records.states import ImageState
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.automation.jobs import CHECKS_KIND, INSTANCE_TAG, KIND_TAG
from toygres_pipelines.automation.schedules import scheduled_time
from toygres_pipelines.automation.settings import AutomationSettings
from toygres_pipelines.drills.janitor import settle_abandoned_drills
from toygres_pipelines.drills.jobs import DRILL_KIND, restore_drill
from toygres_pipelines.drills.settle import settle_drill
from toygres_pipelines.images.backup import running_source

fleet = dg.AssetSpec(
    "fleet",
    group_name="images",
    description="The running instances in the CMS: what backups_fresh and drills_fresh judge. Nothing "
    "materializes it; its Checks tab is the fleet's backup and drill freshness.",
)
BACKUPS_FRESH = "backups_fresh"
DRILLS_FRESH = "drills_fresh"


def abandoned_drills_sensor(settings: AutomationSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="abandoned_drills",
        minimum_interval_seconds=settings.reconcile_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Drills whose run ended without finishing them (terminated, worker lost): failed, their "
        "scratch instances deleted.",
    )
    def abandoned_drills(context: dg.SensorEvaluationContext, cms: CMSResource, platform: PlatformResource):
        settled = settle_abandoned_drills(context.instance, cms, platform, context.log.info)
        return dg.SkipReason(f"{len(settled)} abandoned drill(s) settled")

    return abandoned_drills


def drill_canceled_sensor(settings: AutomationSettings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="drill_run_canceled",
        run_status=dg.DagsterRunStatus.CANCELED,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A terminated drill run: its scratch instance deleted and its drill failed at once "
        "(abandoned_drills catches what this misses).",
    )
    def drill_run_canceled(context: dg.RunStatusSensorContext, cms: CMSResource, platform: PlatformResource):
        run_id = context.dagster_run.run_id
        reason = f"drill run {run_id} was terminated (canceled) before it finished"
        settle_drill(cms, platform, context.instance, run_id, reason, context.log.info)

    return drill_run_canceled


def drill_run_requests(
    cms: CMSResource, platform: PlatformResource, when: datetime, log=lambda _: None
) -> list[dg.RunRequest]:
    """Today's drills: one run per due running instance, keyed by image and date (never twice)."""
    instances = []
    for instance in cms.instances.list([InstanceState.running]):
        try:
            running_source(cms, platform, str(instance.id))
        except ValidationFailed as error:
            log(f"not drilling {instance.namespace}/{instance.k8s_name}: {error}")
            continue
        instances.append(instance)
    day = when.strftime("%Y%m%d")
    return [
        dg.RunRequest(
            run_key=f"drill-{target.name}-{day}",
            run_config={"ops": {"plan_drill": {"config": {"image": str(target.id)}}}},
            tags={KIND_TAG: DRILL_KIND, INSTANCE_TAG: instance.k8s_name},
        )
        for instance, target in due_drills(instances, cms.images.list([ImageState.ready]), when.weekday())
    ]


def weekly_drill_schedule(settings: AutomationSettings) -> dg.ScheduleDefinition:
    timezone = settings.nightly_timezone

    @dg.schedule(
        name="weekly_drills",
        job=restore_drill,
        cron_schedule=settings.drill_cron,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every day: a restore drill of the newest ready image of each running instance whose drill "
        "day is today, so every instance is drilled once a week, spread over the week (TOYGRES_DRILL_CRON).",
    )
    def weekly_drills(context: dg.ScheduleEvaluationContext, cms: CMSResource, platform: PlatformResource):
        when = (scheduled_time(context) or datetime.now(UTC)).astimezone(ZoneInfo(timezone))
        requests = drill_run_requests(cms, platform, when, log=context.log.warning)
        if not requests:
            return dg.SkipReason(f"no running instance with a ready image is due for a drill on {when:%A}")
        return requests

    return weekly_drills


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


def freshness_checks(settings: AutomationSettings) -> list[dg.AssetChecksDefinition]:
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
        report = backup_freshness(
            fleet_instances(cms.instances.list([InstanceState.running]), cms.drills.list()),
            cms.images.list([ImageState.ready]),
            datetime.now(UTC),
            backup_window,
            grace,
        )
        return freshness_result(report, settings.backup_freshness_severity, "backup")

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


FLEET_CHANGING_KINDS = ("backup", "restore", DRILL_KIND)


def fleet_checks_after_runs_sensor(settings: AutomationSettings, job) -> dg.SensorDefinition:
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
            tags={KIND_TAG: CHECKS_KIND, "toygres/after-run": run.run_id},
        )

    return fleet_checks_after_runs


def freshness_schedule(settings: AutomationSettings, job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="freshness_checks",
        job=job,
        cron_schedule=settings.freshness_cron,
        execution_timezone=settings.nightly_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Evaluates backups_fresh and drills_fresh (TOYGRES_FRESHNESS_CRON).",
    )
