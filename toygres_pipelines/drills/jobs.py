"""`restore_drill`: an image restored into a scratch instance by the restore job's own ops, every
table's row count compared with the manifest, the result recorded, the scratch instance deleted.

    plan_drill          the drill row (running), then the restore's own rules (plan_restore) for a
                        scratch instance `drill-<image>`, internal, its DNS label from the run id
    create_instance_record … mark_instance_running   the ops of `restore_instance`, unchanged
    verify_row_counts   every database's tables counted on the scratch instance vs the manifest;
                        the recovery time is drill start to here
    finish_drill        scratch instance deleted, result recorded, `restorable` reported; a failed
                        drill then fails the run
    failure hook        any failed step: scratch instance deleted, drill failed with the reason
"""

import subprocess
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from records import Image, Instance, ValidationFailed
from records.drills import DrillResult, count_differences, seconds_per_gib
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.drills.amcheck import amcheck
from toygres_pipelines.drills.checks import report_restorable
from toygres_pipelines.drills.counting import restored_counts
from toygres_pipelines.drills.settle import SCRATCH_PREFIX, remove_scratch_instance, settle_drill
from toygres_pipelines.restores.config import (
    RestoreConfig,
    check_timeouts,
    job_timeout_field,
    plan_restore,
    ready_image,
    ready_timeout_field,
)
from toygres_pipelines.restores.jobs import TimedPlan, invalid_request, restore_steps
from toygres_pipelines.restores.steps import instance_ref, verify_manifest_only
from toygres_pipelines.shared.run_config import RunConfigLike, op_config_of, op_run_config
from toygres_pipelines.shared.tags import DRILL_KIND, KIND_TAG


class DrillConfig(dg.Config):
    image: str = Field(description="The image to drill: its id or name; it must be ready")
    job_timeout_seconds: int = job_timeout_field()
    ready_timeout_seconds: int = ready_timeout_field()


class DrillVerdict(BaseModel):
    result: DrillResult
    reason: str
    recovery_seconds: float
    tables_checked: int


def scratch_request(image: Image, run_id: str, config: DrillConfig) -> RestoreConfig:
    """What the drill asks of the restore: a small internal instance named after the image, its
    DNS label unique to the run (a label is reserved only while its instance lives)."""
    return RestoreConfig.model_validate(
        {
            "name": f"{SCRATCH_PREFIX}{image.id.hex[:8]}",
            "dns_label": f"{SCRATCH_PREFIX}{run_id.replace('-', '')[:16]}",
            "source_image_id": str(image.id),
            "internal": True,
            "storage_size_gb": 1,  # raised to the image's storage size by plan_restore
            "job_timeout_seconds": config.job_timeout_seconds,
            "ready_timeout_seconds": config.ready_timeout_seconds,
        }
    )


@dg.op(description="Record the drill (running) and plan its scratch restore with the restore's own rules")
def plan_drill(
    context: dg.OpExecutionContext, config: DrillConfig, cms: CMSResource, platform: PlatformResource
) -> TimedPlan:
    try:
        target = ready_image(cms, config.image)
        drill = cms.drills.start(target.id, target.source_instance_id, context.run_id, datetime.now(UTC))
        request = scratch_request(target, context.run_id, config)
        check_timeouts(request)
        plan = plan_restore(request.request_fields(), cms, platform)
    except ValidationFailed as error:
        raise invalid_request(error) from None
    context.log.info(f"drill {drill.id}: restoring image {plan.image_name} into scratch instance {plan.k8s_name}")
    return TimedPlan(
        plan=plan, job_timeout_seconds=request.job_timeout_seconds, ready_timeout_seconds=request.ready_timeout_seconds
    )


@dg.op(description="Count every table of every database on the scratch instance; compare with the manifest")
def verify_row_counts(
    context: dg.OpExecutionContext,
    instance: Instance,
    timed: TimedPlan,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> DrillVerdict:
    manifest, _ = verify_manifest_only(blob, timed.plan)
    found = restored_counts(
        platform.endpoints(instance_ref(instance)), platform.read_instance_password(instance_ref(instance)), manifest
    )
    drill = cms.drills.find_by_run(context.run_id)
    started = drill.started_at if drill else datetime.now(UTC)
    recovery = max(0.0, (datetime.now(UTC) - started).total_seconds())
    checked = sum(len(tables) for tables in found.values())
    try:  # the restored data's structure: every heap page and btree index, each index entry against its heap
        structure = amcheck(platform, instance_ref(instance), instance.postgres_version)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        return DrillVerdict(result=DrillResult.failed, reason=str(error), recovery_seconds=recovery,
                            tables_checked=checked)  # fmt: skip
    context.log.info(structure)
    if not manifest.counted:
        return DrillVerdict(
            result=DrillResult.uncounted,
            reason=f"restored and answering; counts not compared: manifest format {manifest.format_version} "
            f"records no row counts; {structure}",
            recovery_seconds=recovery,
            tables_checked=checked,
        )
    differences = [
        f"database {database!r}: {line}"
        for database, counts in manifest.row_counts_by_database().items()
        for line in count_differences(counts or {}, found.get(database, {}))
    ]
    for line in differences:
        context.log.warning(line)
    if differences:
        return DrillVerdict(
            result=DrillResult.failed,
            reason=f"row counts differ from the manifest in {len(differences)} table(s): " + "; ".join(differences),
            recovery_seconds=recovery,
            tables_checked=checked,
        )
    context.log.info(f"row counts of {checked} table(s) equal the manifest's; recovery took {recovery:.1f}s")
    return DrillVerdict(
        result=DrillResult.passed,
        reason=f"restored; row counts of {checked} table(s) equal the manifest's; {structure}",
        recovery_seconds=recovery,
        tables_checked=checked,
    )


@dg.op(description="Delete the scratch instance, record the result, report `restorable` on the image partition")
def finish_drill(
    context: dg.OpExecutionContext,
    verdict: DrillVerdict,
    timed: TimedPlan,
    cms: CMSResource,
    platform: PlatformResource,
) -> None:
    drill = cms.drills.find_by_run(context.run_id)
    if drill is None:
        raise dg.Failure(description=f"no drill row for run {context.run_id}", allow_retries=False)
    remove_scratch_instance(cms, platform, context.run_id, "drill finished", context.log.info)
    size = (image_row := cms.images.get(timed.plan.image_id)) and image_row.backup_size_bytes
    drill = cms.drills.finish(
        drill.id,
        verdict.result,
        verdict.reason,
        recovery_seconds=verdict.recovery_seconds,
        seconds_per_gib=seconds_per_gib(verdict.recovery_seconds, size or None),
        backup_size_bytes=size or None,
        tables_checked=verdict.tables_checked,
    )
    report_restorable(context.instance, timed.plan.image_name, drill)
    context.log.info(f"drill of {timed.plan.image_name}: {drill.result} ({drill.reason})")
    if drill.result is DrillResult.failed:
        raise dg.Failure(
            description=f"image {timed.plan.image_name} is not restorable: {drill.reason}", allow_retries=False
        )


@dg.failure_hook(required_resource_keys={"cms", "platform"})
def settle_failed_drill(context: dg.HookContext) -> None:
    """Whatever step failed: the scratch instance goes and a running drill is failed with the reason."""
    settle_drill(
        context.resources.cms,
        context.resources.platform,
        context.instance,
        context.run_id,
        reason=f"step {context.op.name} failed: {context.op_exception}",
        log=context.log.info,
    )


@dg.job(
    description="Restore drill: restore an image into a scratch instance with the restore's own ops, compare "
    "every table's row count with the manifest, record the result, delete the scratch instance",
    tags={KIND_TAG: DRILL_KIND},
    hooks={settle_failed_drill},
    executor_def=dg.in_process_executor,
)
def restore_drill():
    timed = plan_drill()
    finish_drill(verify_row_counts(restore_steps(timed), timed), timed)


def drill_run_config(image: str, **limits: int) -> dg.RunConfig:
    """The run config of a drill of `image` (its id or name); `limits`: the job's timeouts."""
    return op_run_config(plan_drill, DrillConfig(image=image, **limits))


def drill_config_of(run_config: RunConfigLike) -> dict[str, Any]:
    """What a launched drill run's config asks (`plan_drill`'s config)."""
    return op_config_of(run_config, plan_drill)
