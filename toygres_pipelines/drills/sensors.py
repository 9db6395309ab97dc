"""The drills' sensors, built from the settings:

drill_run_canceled  a terminated drill run: its scratch instance deleted, its drill failed at once
abandoned_drills    drills whose run ended without finishing: failed, scratch instance deleted
"""

from __future__ import annotations

import dagster as dg

from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.janitor import settle_abandoned_drills
from toygres_pipelines.drills.settle import settle_drill
from toygres_pipelines.shared.settings import SharedSettings


def abandoned_drills_sensor(settings: SharedSettings) -> dg.SensorDefinition:
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


def drill_canceled_sensor(settings: SharedSettings) -> dg.SensorDefinition:
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
