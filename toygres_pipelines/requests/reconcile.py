"""`reconcile_stuck_rows`: rows left `creating`/`accepted` by runs that ended without reporting.

A run worker killed outright (OOM, node loss; run monitoring then marks the run failed) runs no
failure handler, and a run-status sensor that was stopped or errored never sees the end of a run.
Every few minutes this sensor looks at every image and instance still `creating` and every
request still `accepted`, finds its Dagster run (the row's run id, or the request-id tag) and,
when that run is finished (or missing from this Dagster instance), applies the same write-back
as the run-status sensors with the reason "run <id> ended without reporting (<status>)", followed
by the run's own failure message when Dagster recorded one (failed steps, else the run failure
event, e.g. run monitoring's "run worker died").
Rows whose run is queued, starting, started or canceling are not touched, and finished runs are
left to the run-status sensors for a grace period first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime

import dagster as dg
from pydantic import BaseModel

from records import ImageRequest, ImageState, InstanceState, LogSink, RequestState, RestoreRequest
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.requests.settings import RequestsSettings
from toygres_pipelines.requests.writeback import FINISHED, Settlement, run_failure_message, settle_run
from toygres_pipelines.shared.request_claims import first_run_for_request

MISSING = "missing from this Dagster instance"


class Reconciliation(BaseModel):
    settled: list[Settlement] = []
    waiting: dict[str, str] = {}  # run id -> status of runs still going (or within the grace period)

    def summary(self) -> str:
        changed = [s.describe() for s in self.settled if s.changed]
        head = f"{len(changed)} run(s) settled, {len(self.waiting)} still running or in grace"
        return "; ".join([head, *changed])


def stuck_run_ids(instance: dg.DagsterInstance, cms: CMSResource) -> dict[str, float]:
    """Run ids of every creating image/instance and accepted request (in first-seen order), each
    with the time its newest such row last changed (epoch seconds)."""
    run_ids: dict[str, float] = {}

    def add(run_id: str | None, changed: datetime) -> None:
        if run_id:
            run_ids[run_id] = max(run_ids.get(run_id, 0.0), changed.timestamp())

    for image in cms.images.list([ImageState.creating]):
        add(image.run_id, image.updated_at)
    for row in cms.instances.list([InstanceState.creating]):
        add(row.run_id, row.updated_at)
    for request in [
        *cms.requests.list(ImageRequest, [RequestState.accepted]),
        *cms.requests.list(RestoreRequest, [RequestState.accepted]),
    ]:
        run_id = request.run_id
        if run_id is None:
            # never launched (the request sensor re-emits it) or launched and not yet recorded
            run = first_run_for_request(instance, request.id)
            run_id = run.run_id if run else None
        add(run_id, request.updated_at)
    return run_ids


def reconcile(
    instance: dg.DagsterInstance,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    *,
    grace_seconds: float = RequestsSettings().reconcile_grace_seconds,
    log: LogSink = lambda _: None,
) -> Reconciliation:
    done = Reconciliation()
    now = time.time()
    for run_id, row_changed in stuck_run_ids(instance, cms).items():
        tags: Mapping[str, str]
        record = instance.get_run_record_by_id(run_id)
        if record is None:
            if now - row_changed < grace_seconds:
                done.waiting[run_id] = f"{MISSING} (grace)"
                continue
            status, tags = MISSING, {}
        else:
            run = record.dagster_run
            if run.status not in FINISHED:
                done.waiting[run_id] = run.status.value
                continue
            ended = record.end_time or (record.update_timestamp.timestamp() if record.update_timestamp else None)
            if ended is not None and now - ended < grace_seconds:
                done.waiting[run_id] = f"{run.status.value} (grace)"
                continue
            status, tags = run.status.value, run.tags
        reason = f"run {run_id} ended without reporting ({status})"
        if status == dg.DagsterRunStatus.FAILURE.value:
            detail = run_failure_message(instance, run_id)
            reason += f": {detail}" if detail else ""
        settlement = settle_run(
            cms=cms,
            blob=blob,
            platform=platform,
            run_id=run_id,
            tags=tags,
            succeeded=status == dg.DagsterRunStatus.SUCCESS.value,
            reason=reason,
            log=log,
        )
        if settlement.changed:
            log(settlement.describe())
        done.settled.append(settlement)
    return done


def reconcile_sensor(settings: RequestsSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name="reconcile_stuck_rows",
        minimum_interval_seconds=settings.reconcile_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Images/instances left creating and requests left accepted by runs that ended (or vanished) "
        "without reporting become failed with the reason.",
    )
    def reconcile_stuck_rows(
        context: dg.SensorEvaluationContext, cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
    ):
        done = reconcile(
            context.instance, cms, blob, platform, grace_seconds=settings.reconcile_grace_seconds, log=context.log.info
        )
        return dg.SkipReason(done.summary())

    return reconcile_stuck_rows
