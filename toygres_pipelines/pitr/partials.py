"""Job `wal_partials_prune` (schedule `wal_partials_prune_schedule`, every 10 minutes): the partial
uploads of every instance's archive that a later upload of the same segment supersedes (a later
partial or the finished segment: WAL only grows) are deleted once superseded for longer than
PLAN_GRACE, unless the plan of a running point-in-time restore names them.

Why this is safe: a restore plans from the newest partial only, so a superseded partial is read
only by a restore planned before it was superseded; such a restore has written its plan.json
(restores/pitr/<ns>/<name>/plan.json, deleted when its job ends) within PLAN_GRACE of planning,
and is then protected by it. The archiver itself cannot delete (docs/security.md)."""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import ValidationError

from records import LogSink
from records.wal import RecoveryPlanFile, superseded_partials
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.wal_archive import list_timelines
from toygres_pipelines.pitr.restore import PLANS_PREFIX
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.schedules import every
from toygres_pipelines.shared.tags import MAINTENANCE_KIND

# Planning -> plan.json written: the instance row, the hold, its Secret and volume (minutes at most).
PLAN_GRACE = timedelta(minutes=30)


def planned_blobs(blob: BlobStorageResource) -> set[str]:
    """Every blob a running point-in-time restore's plan names; ValueError naming an unreadable
    plan (then nothing is known to be unplanned, and nothing is deleted)."""
    named: set[str] = set()
    for name in blob.list_names(PLANS_PREFIX):
        if not name.endswith("/plan.json"):
            continue
        try:
            plan = RecoveryPlanFile.model_validate_json(blob.read_bytes(name))
        except (ValidationError, ValueError) as error:
            raise ValueError(f"{name}: not a readable restore plan, no partial pruned: {error}") from None
        named.update(segment.blob for segment in plan.segments)
    return named


def prune_partials(
    cms: CMSResource, blob: BlobStorageResource, log: LogSink, now: datetime | None = None
) -> dict[str, int]:
    """Per instance (namespace/k8s_name), how many superseded partial uploads were deleted."""
    superseded_before = (now or datetime.now(UTC)) - PLAN_GRACE
    planned = planned_blobs(blob)
    pruned: dict[str, int] = {}
    failed: dict[str, str] = {}
    for instance in sorted(cms.instances.list(), key=lambda i: (i.namespace, i.k8s_name)):
        name = f"{instance.namespace}/{instance.k8s_name}"
        try:
            deleted = 0
            for timeline in list_timelines(blob, instance.namespace, instance.k8s_name):
                for blob_name in superseded_partials(timeline.segments, superseded_before):
                    if blob_name not in planned:
                        blob.delete_blob(blob_name)
                        deleted += 1
            pruned[name] = deleted
            if deleted:
                log(f"{name}: {deleted} superseded partial upload(s) deleted")
        except Exception as error:  # noqa: BLE001 - named, the others go on
            failed[name] = f"{type(error).__name__}: {error}"
    if failed:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    return pruned


@dg.op(description="Superseded partial WAL uploads no running restore plan names are deleted")
def wal_partials_prune_op(context: dg.OpExecutionContext, cms: CMSResource, blob: BlobStorageResource) -> None:
    pruned = prune_partials(cms, blob, context.log.info)
    context.add_output_metadata({"deleted": sum(pruned.values()), "instances": len(pruned)})


wal_partials_prune_job = one_op_job(
    wal_partials_prune_op,
    "wal_partials_prune",
    MAINTENANCE_KIND,
    "PITR: superseded partial WAL uploads deleted (docs/pitr.md)",
)
wal_partials_prune_schedule = every(
    "wal_partials_prune_schedule", wal_partials_prune_job, "*/10 * * * *", "Runs wal_partials_prune every 10 minutes"
)
