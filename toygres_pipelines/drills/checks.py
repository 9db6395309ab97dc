"""Asset checks on the image partition: `restorable` (the newest drill's verdict, with metadata that
plots over time: recovery seconds, seconds per GiB, tables checked) and `size_plausible`."""

import warnings

import dagster as dg

from records import ImageState
from records.drills import Drill, DrillResult
from records.freshness import previous_ready_image, size_anomaly
from resources.cms import CMSResource
from toygres_pipelines.images.assets import image, image_named, image_partitions
from toygres_pipelines.shared import asset_keys

# Partitioned asset checks are a preview feature of Dagster 1.13; these two rely on it knowingly.
warnings.filterwarnings(
    "ignore", message=r"Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

RESTORABLE_CHECK = "restorable"
IMAGE_ASSET = asset_keys.IMAGE


def restorable_metadata(drill: Drill) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "result": dg.MetadataValue.text(drill.result.value),
        "drill_run_id": dg.MetadataValue.text(drill.run_id),
        "started_at": dg.MetadataValue.timestamp(drill.started_at),
        "counts_compared": dg.MetadataValue.bool(drill.result in (DrillResult.passed, DrillResult.failed)),
    }
    for field in ("recovery_seconds", "seconds_per_gib"):
        value = getattr(drill, field)
        if value is not None:
            metadata[field] = dg.MetadataValue.float(float(value))
    if drill.tables_checked is not None:
        metadata["tables_checked"] = dg.MetadataValue.int(drill.tables_checked)
    if drill.reason:
        metadata["reason"] = dg.MetadataValue.text(drill.reason)
    return metadata


def restorable_evaluation(image_name: str, drill: Drill) -> dg.AssetCheckEvaluation:
    passed = drill.result in (DrillResult.passed, DrillResult.uncounted)
    return dg.AssetCheckEvaluation(
        asset_key=IMAGE_ASSET,
        check_name=RESTORABLE_CHECK,
        passed=passed,
        metadata=restorable_metadata(drill),
        severity=dg.AssetCheckSeverity.ERROR,
        description=drill.reason,
        partition=image_name,
    )


def report_restorable(instance: dg.DagsterInstance, image_name: str, drill: Drill) -> None:
    """The drill's verdict as a `restorable` evaluation on the image's partition."""
    instance.report_runless_asset_event(restorable_evaluation(image_name, drill))


@dg.asset_check(
    asset=image,
    name=RESTORABLE_CHECK,
    partitions_def=image_partitions,
    description="The newest restore drill of this image (job restore_drill): restored into a scratch instance, "
    "every table's row count equal to the manifest's, scratch instance deleted. Each drill reports here; "
    "executing the check reports the newest drill again (it does not run one).",
)
def restorable(context: dg.AssetCheckExecutionContext, cms: CMSResource) -> dg.AssetCheckResult:
    name = context.partition_key
    row = image_named(cms, name)
    drills = cms.drills.list(image_id=row.id) if row is not None else []
    finished = [d for d in drills if d.result is not DrillResult.running]
    if not finished:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"image {name} has never been drilled: launch restore_drill with image {name!r}",
        )
    evaluation = restorable_evaluation(name, finished[0])
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        severity=evaluation.severity,
        metadata=evaluation.metadata,
        description=evaluation.description,
    )


SIZE_CHECK = "size_plausible"


@dg.asset_check(
    asset=image,
    name=SIZE_CHECK,
    partitions_def=image_partitions,
    blocking=False,
    description="The image is at least half and at most double its instance's previous ready image "
    "(a sudden change often means lost data or a runaway table). Warns; never blocks.",
)
def size_plausible(context: dg.AssetCheckExecutionContext, cms: CMSResource) -> dg.AssetCheckResult:
    return size_result(cms, context.partition_key)


def size_result(cms: CMSResource, name: str) -> dg.AssetCheckResult:
    """`size_plausible` of the image `name` against its instance's previous ready image."""
    row = image_named(cms, name)
    if row is None or row.state is not ImageState.ready:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"no ready image named {name!r}: nothing to compare",
        )
    previous = previous_ready_image(cms.images.list([ImageState.ready]), row)
    why = size_anomaly(row.backup_size_bytes, previous.backup_size_bytes if previous else None)
    metadata: dict[str, dg.MetadataValue] = {"bytes": dg.MetadataValue.int(row.backup_size_bytes or 0)}
    if previous is not None:
        metadata["previous_image"] = dg.MetadataValue.text(previous.name)
        metadata["previous_bytes"] = dg.MetadataValue.int(previous.backup_size_bytes or 0)
    return dg.AssetCheckResult(
        passed=why is None,
        severity=dg.AssetCheckSeverity.WARN,
        description=why or ("first image of its instance" if previous is None else "within half to double"),
        metadata=metadata,
    )
