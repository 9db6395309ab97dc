"""PITR drill (job `pitr_drill`, schedule `weekly_pitr_drills`): an instance restored into a
scratch instance to a point inside its window (10 minutes before its end, or the middle of a
shorter window), the replayed point checked against the target, `pg_amcheck` over every database,
the recovery time recorded, the scratch instance deleted whatever happened. Every drill's result,
target, replayed point and RTO go to toygres_cms.pitr_drills and the `pitr_restorable` check."""

import hashlib
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import BaseModel, Field

from records import Instance, InstanceRef, InstanceState, LogSink
from records.drills import DrillResult
from records.freshness import PITR_DRILL_DAY, due_on
from records.wal import PITR_BASE_BACKUP_TAG
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.amcheck import amcheck
from toygres_pipelines.lifecycle.instances import delete_instance
from toygres_pipelines.pitr.checks import pitr_restorable_evaluation
from toygres_pipelines.pitr.restore import restore_to_time
from toygres_pipelines.pitr.window import window_of
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.run_config import op_run_config
from toygres_pipelines.shared.schedules import running_schedule, scheduled_time
from toygres_pipelines.shared.tags import DRILL_KIND, INSTANCE_TAG, KIND_TAG

BEFORE_END = timedelta(minutes=10)
REPLAYED = re.compile(r"last transaction replayed committed at (?P<at>.+)$")


class PitrDrillResult(BaseModel):
    passed: bool
    reason: str
    target_time: datetime | None = None
    replayed_at: datetime | None = None
    rto_seconds: float | None = None
    scratch: str | None = None
    base_backup_id: uuid.UUID | None = None


def drill_target(earliest: datetime, latest: datetime) -> datetime:
    if latest - earliest > BEFORE_END:
        return latest - BEFORE_END
    return earliest + (latest - earliest) / 2


def pitr_drill(
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    source: Instance,
    log: LogSink,
    run_id: str | None = None,
) -> PitrDrillResult:
    """Drill `source` and record the result in toygres_cms.pitr_drills (whatever it is)."""
    started_at = datetime.now(UTC)
    try:
        result = drill_once(cms, blob, platform, source, log, run_id)
    except Exception as error:  # noqa: BLE001 - the window unreadable, the scratch not deletable: recorded too
        result = PitrDrillResult(passed=False, reason=f"{type(error).__name__}: {error}"[:2000])
    cms.pitr_drills.record(
        source.id, DrillResult.passed if result.passed else DrillResult.failed, result.reason,
        started_at=started_at, run_id=run_id, base_backup_id=result.base_backup_id, target_time=result.target_time,
        replayed_at=result.replayed_at, rto_seconds=result.rto_seconds, scratch=result.scratch,
    )  # fmt: skip
    return result


def drill_once(
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    source: Instance,
    log: LogSink,
    run_id: str | None,
) -> PitrDrillResult:
    state = window_of(cms, blob, source)
    if state.window is None:
        return PitrDrillResult(passed=False, reason=f"no recoverable window: {state.why_none}")
    target = drill_target(state.window.earliest, state.window.latest)
    suffix = hashlib.sha256(f"{source.k8s_name}:{time.time_ns()}".encode()).hexdigest()[:6]
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        log(line)

    started = time.monotonic()
    scratch = None
    try:
        scratch = restore_to_time(
            cms, blob, platform, source_instance=source.k8s_name, name=f"pitr-drill-{suffix}",
            dns_label=f"pitr-drill-{suffix}", target_time=target, run_id=run_id, log=collect,
        )  # fmt: skip
        rto = time.monotonic() - started
        base_backup_id = uuid.UUID(str(scratch.tags[PITR_BASE_BACKUP_TAG]))
        replayed = next((m.group("at") for line in lines if (m := REPLAYED.search(line))), None)
        replayed_at = datetime.fromisoformat(replayed) if replayed and replayed != "unknown" else None
        if replayed_at is not None and replayed_at > target:
            return PitrDrillResult(
                passed=False, reason=f"replayed past the target: {replayed_at} > {target}", target_time=target,
                replayed_at=replayed_at, rto_seconds=rto, scratch=scratch.k8s_name, base_backup_id=base_backup_id,
            )  # fmt: skip
        structure = amcheck(
            platform, InstanceRef(k8s_name=scratch.k8s_name, namespace=scratch.namespace), scratch.postgres_version
        )
        return PitrDrillResult(
            passed=True, reason=f"restored to the target, recovery target reached, {structure}",
            target_time=target, replayed_at=replayed_at, rto_seconds=rto, scratch=scratch.k8s_name,
            base_backup_id=base_backup_id,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the drill's finding, recorded
        return PitrDrillResult(
            passed=False, reason=f"{type(error).__name__}: {error}"[:2000], target_time=target,
            scratch=scratch.k8s_name if scratch else None,
            base_backup_id=uuid.UUID(str(scratch.tags[PITR_BASE_BACKUP_TAG])) if scratch else None,
        )  # fmt: skip
    finally:
        if scratch is not None:
            delete_instance(cms, platform, scratch.k8s_name, force=True, reason="pitr drill finished", log=log)


class PitrDrillConfig(dg.Config):
    source_instance: str = Field(description="The instance drilled (k8s_name or id); it must be running")


@dg.op(description="Restore to a point inside the window into a scratch instance, check, pg_amcheck, delete")
def pitr_drill_op(
    context: dg.OpExecutionContext,
    config: PitrDrillConfig,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> None:
    source = cms.instances.find(config.source_instance)
    if source is None or source.state is not InstanceState.running:
        raise dg.Failure(f"source_instance: {config.source_instance!r} is not a running instance")
    result = pitr_drill(cms, blob, platform, source, context.log.info, run_id=context.run_id)
    context.instance.report_runless_asset_event(pitr_restorable_evaluation(cms))
    context.add_output_metadata(
        {"passed": result.passed, "reason": result.reason, "target_time": str(result.target_time),
         "replayed_at": str(result.replayed_at), "rto_seconds": dg.MetadataValue.float(result.rto_seconds or 0.0)}
    )  # fmt: skip
    if not result.passed:
        raise dg.Failure(f"pitr drill of {source.k8s_name} failed: {result.reason}")


def pitr_drill_run_config(source_instance: str) -> dg.RunConfig:
    return op_run_config(pitr_drill_op, PitrDrillConfig(source_instance=source_instance))


pitr_drill_job = one_op_job(
    pitr_drill_op,
    "pitr_drill",
    DRILL_KIND,
    "Restore an instance to a point in time into a scratch instance and check it",
)


@running_schedule(
    "weekly_pitr_drills",
    pitr_drill_job,
    "30 5 * * *",
    "Each running instance with a base backup gets a PITR drill once a week, on its own day",
)
def weekly_pitr_drills(context: dg.ScheduleEvaluationContext, cms: CMSResource):
    when = scheduled_time(context) or datetime.now(UTC)
    with_bases = {b.instance_id for b in cms.base_backups.list()}
    running = [i for i in cms.instances.list([InstanceState.running]) if i.id in with_bases]
    for instance in due_on(running, when.weekday(), PITR_DRILL_DAY):
        yield dg.RunRequest(
            run_key=f"pitr-drill-{instance.k8s_name}-{when.date().isoformat()}",
            run_config=pitr_drill_run_config(instance.k8s_name),
            tags={KIND_TAG: DRILL_KIND, INSTANCE_TAG: instance.k8s_name},
        )
