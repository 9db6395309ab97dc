"""Drill automation: the janitor of abandoned drills (and, below, the weekly drills and freshness)."""

from __future__ import annotations

import dagster as dg

from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.automation.settings import AutomationSettings
from toygres_pipelines.drills.janitor import settle_abandoned_drills


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
