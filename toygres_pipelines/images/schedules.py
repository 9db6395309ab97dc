"""`nightly_backups`: one new snapshot partition and one backup run per running instance.

A schedule's result cannot carry dynamic-partition requests, so the evaluation registers the
night's partitions itself (on the instance) before it returns the run requests. Keys and run
keys are a function of the instance and the scheduled date only, so a re-evaluated tick adds
nothing new and launches nothing twice (the daemon skips run keys it has already used).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
from dagster._core.storage.tags import PARTITION_NAME_TAG

from records import Instance, InstanceState, LogSink, ValidationFailed, validate_image_name
from records.drills import DrillResult
from records.freshness import fleet_instances
from records.requests import ImageRequestFields
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.backup import check_running_source
from toygres_pipelines.images.jobs import backup_image, backup_run_config
from toygres_pipelines.images.settings import ImagesSettings
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS
from toygres_pipelines.shared.schedules import running_schedule, scheduled_time
from toygres_pipelines.shared.tags import BACKUP_KIND, INSTANCE_TAG, KIND_TAG


def nightly_key(instance: Instance, night: str) -> str:
    return f"{instance.k8s_name}__nightly-{night}"


def night_of(scheduled: datetime | None, timezone: str) -> str:
    """YYYYMMDD of the scheduled time in the schedule's timezone."""
    zone = ZoneInfo(timezone)
    when = scheduled or datetime.now(zone)
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo("UTC"))
    return when.astimezone(zone).strftime("%Y%m%d")


def nightly_run_requests(
    instance: dg.DagsterInstance,
    cms: CMSResource,
    platform: PlatformResource,
    scheduled: datetime | None,
    timezone: str,
    log: LogSink = lambda _: None,
) -> list[dg.RunRequest]:
    night = night_of(scheduled, timezone)
    requests = []
    # One read of the running instances (a running drill's scratch instance is none of the fleet's);
    # each is checked by the rules of `running_source`.
    fleet = fleet_instances(cms.instances.list([InstanceState.running]), cms.drills.list(results=[DrillResult.running]))
    for source in sorted(fleet, key=lambda i: i.k8s_name):
        try:
            check_running_source(platform, source, str(source.id))
        except ValidationFailed as error:
            log(f"not backing up {source.namespace}/{source.k8s_name} tonight: {error}")
            continue
        key = validate_image_name(nightly_key(source, night), field="image name")
        requests.append(
            dg.RunRequest(
                run_key=key,
                partition_key=key,
                run_config=backup_run_config(
                    ImageRequestFields(
                        image_name=key,
                        source_instance=str(source.id),
                        description=f"nightly backup of {source.k8s_name} for {night}",
                    )
                ),
                # The partition is added below, in this tick: with its tag set, Dagster takes the
                # request as resolved instead of looking each key up in its storage (docs/benchmarks.md).
                tags={KIND_TAG: BACKUP_KIND, INSTANCE_TAG: source.k8s_name, PARTITION_NAME_TAG: key},
            )
        )
    if requests:
        instance.add_dynamic_partitions(IMAGE_PARTITIONS, [r.partition_key for r in requests if r.partition_key])
    return requests


def nightly_schedule(settings: ImagesSettings) -> dg.ScheduleDefinition:
    timezone = settings.nightly_timezone

    @running_schedule(
        "nightly_backups",
        backup_image,
        settings.nightly_cron,
        "Every night: a new image partition `<instance>__nightly-<YYYYMMDD>` and a backup run for "
        "each running instance in the CMS (TOYGRES_NIGHTLY_CRON, TOYGRES_NIGHTLY_TIMEZONE).",
        timezone,
    )
    def nightly_backups(context: dg.ScheduleEvaluationContext, cms: CMSResource, platform: PlatformResource):
        # A schedule cannot return dynamic partition requests: nightly_run_requests adds them itself.
        requests = nightly_run_requests(
            context.instance, cms, platform, scheduled_time(context), timezone, log=context.log.warning
        )
        if not requests:
            return dg.SkipReason("no running instance in the CMS")
        keys = [r.partition_key for r in requests]
        more = f" and {len(keys) - 20} more" if len(keys) > 20 else ""
        context.log.info(f"nightly backups of {len(requests)} instance(s): {keys[:20]}{more}")
        return requests

    return nightly_backups
