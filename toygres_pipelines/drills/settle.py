"""Ending a drill: its scratch instance goes, whatever happened, and its row gets a result.

A drill's scratch instance is the instance its run created (instances.run_id = the drill's run
id, name `drill-…`); `settle_drill` removes it and fails a drill still `running`. The drill job's
failure hook calls it for a failed step, the `abandoned_drills` sensor for a run that ended
without finishing (terminated, worker lost).
"""

from __future__ import annotations

import dagster as dg

from records import InstanceState, LogSink
from records.drills import Drill, DrillResult
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.checks import report_restorable
from toygres_pipelines.lifecycle.instances import delete_instance
from toygres_pipelines.restores.steps import clean_up_failed_restore

SCRATCH_PREFIX = "drill-"


def remove_scratch_instance(cms: CMSResource, platform: PlatformResource, run_id: str, reason: str, log: LogSink):
    """Delete the instance the drill run `run_id` restored into, in whatever state it was left."""
    scratch = cms.instances.find_by_run(run_id)
    if scratch is None or scratch.state is InstanceState.deleted:
        return
    if scratch.state is InstanceState.creating:  # its objects go, it becomes failed, then deleted
        clean_up_failed_restore(cms, platform, scratch, reason=reason, log=log)
    delete_instance(
        cms, platform, str(scratch.id), force=True, reason=f"restore drill: {reason}", run_id=run_id, log=log
    )


def settle_drill(
    cms: CMSResource,
    platform: PlatformResource,
    instance: dg.DagsterInstance,
    run_id: str,
    reason: str,
    log: LogSink,
) -> Drill | None:
    """Remove the run's scratch instance and fail its drill if it is still running."""
    drill = cms.drills.find_by_run(run_id)
    if drill is None:
        return None
    try:
        remove_scratch_instance(cms, platform, run_id, reason, log)
    finally:
        if drill.result is DrillResult.running:
            drill = cms.drills.finish(drill.id, DrillResult.failed, reason)
            image = cms.images.get(drill.image_id)
            if image is not None:
                report_restorable(instance, image.name, drill)
            log(f"drill {drill.id} of image {image.name if image else drill.image_id} failed: {reason[:300]}")
    return drill
