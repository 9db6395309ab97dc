"""`weekly_drills` (schedule, TOYGRES_DRILL_CRON, daily): the running instances whose drill day
(records.freshness.drill_weekday) is today, each its newest ready image -> restore_drill; the
restore pool (`toygres-restore`) limits how many run at once."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg

from records import InstanceState, ValidationFailed
from records.freshness import due_drills
from records.states import ImageState
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.jobs import drill_run_config, restore_drill
from toygres_pipelines.drills.settings import DrillsSettings
from toygres_pipelines.images.backup import running_source
from toygres_pipelines.shared.schedules import running_schedule, scheduled_time
from toygres_pipelines.shared.tags import DRILL_KIND, INSTANCE_TAG, KIND_TAG


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
            run_config=drill_run_config(str(target.id)),
            tags={KIND_TAG: DRILL_KIND, INSTANCE_TAG: instance.k8s_name},
        )
        for instance, target in due_drills(instances, cms.images.list([ImageState.ready]), when.weekday())
    ]


def weekly_drill_schedule(settings: DrillsSettings) -> dg.ScheduleDefinition:
    timezone = settings.nightly_timezone

    @running_schedule(
        "weekly_drills",
        restore_drill,
        settings.drill_cron,
        "Every day: a restore drill of the newest ready image of each running instance whose drill "
        "day is today, so every instance is drilled once a week, spread over the week (TOYGRES_DRILL_CRON).",
        timezone,
    )
    def weekly_drills(context: dg.ScheduleEvaluationContext, cms: CMSResource, platform: PlatformResource):
        when = (scheduled_time(context) or datetime.now(UTC)).astimezone(ZoneInfo(timezone))
        requests = drill_run_requests(cms, platform, when, log=context.log.warning)
        if not requests:
            return dg.SkipReason(f"no running instance with a ready image is due for a drill on {when:%A}")
        return requests

    return weekly_drills
