"""Drills whose run ended without finishing them (terminated, worker lost: no failure hook ran)
are failed and their scratch instances deleted; a finished drill whose scratch instance is still
there (its removal failed) gets it removed again."""

from __future__ import annotations

import dagster as dg

from records import LogSink
from records.drills import Drill, DrillResult
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.settle import remove_scratch_instance, settle_drill

MISSING = "missing from this Dagster instance"


def settle_abandoned_drills(
    instance: dg.DagsterInstance, cms: CMSResource, platform: PlatformResource, log: LogSink
) -> list[Drill]:
    """Every running drill whose run is finished (or unknown here): failed, scratch instance deleted."""
    settled = []
    for drill in cms.drills.list(results=[DrillResult.running]):
        run = instance.get_run_by_id(drill.run_id)
        if run is not None and not run.is_finished:
            continue
        status = run.status.value if run is not None else MISSING
        done = settle_drill(
            cms, platform, instance, drill.run_id, f"drill run {drill.run_id} ended without finishing ({status})", log
        )
        if done is not None:
            settled.append(done)
    for drill in cms.drills.with_scratch_left():
        run = instance.get_run_by_id(drill.run_id)
        if run is None or run.is_finished:
            remove_scratch_instance(cms, platform, drill.run_id, f"drill {drill.id} ended with it left", log)
    return settled
