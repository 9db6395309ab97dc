"""Job `wal_retention`: per instance, the newest TOYGRES_PITR_KEEP_BASE_BACKUPS base backups are
kept with all the WAL they need (records/wal.py plan_wal_retention); older base backups and the
WAL before the oldest kept one go. The row is marked deleted before its blobs go, so a restore
never plans from a base backup being deleted; a base backup a running point-in-time restore or
drill holds (cms.base_backups.hold) is not deleted, and the WAL is cut only before the oldest base
backup still ready once the deletions are done; one instance failing never stops the others.
A superseded partial upload goes once superseded for longer than PARTIAL_GRACE: longer than a
restore planned from it can still read it (its grant lives RESTORE_TIMEOUT_SECONDS from the job's
start; the hour covers planning, the instance's creation and the superseding upload itself)."""

import os
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import BaseModel

from records import LogSink
from records.wal import BaseBackupState, WalRetentionPlan, plan_wal_retention
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.wal_archive import list_timelines
from toygres_pipelines.pitr.restore import RESTORE_TIMEOUT_SECONDS
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.schedules import every
from toygres_pipelines.shared.tags import MAINTENANCE_KIND

DEFAULT_KEEP_BASE_BACKUPS = 2
PARTIAL_GRACE = timedelta(seconds=RESTORE_TIMEOUT_SECONDS) + timedelta(hours=1)


def keep_base_backups() -> int:
    raw = os.environ.get("TOYGRES_PITR_KEEP_BASE_BACKUPS", str(DEFAULT_KEEP_BASE_BACKUPS))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"TOYGRES_PITR_KEEP_BASE_BACKUPS: a whole number >= 1, got {raw!r}")
    return int(raw)


class RetentionOutcome(BaseModel):
    plans: dict[str, WalRetentionPlan] = {}
    failed: dict[str, str] = {}


def apply_wal_retention(
    cms: CMSResource, blob: BlobStorageResource, keep: int, log: LogSink, now: datetime | None = None
) -> RetentionOutcome:
    outcome = RetentionOutcome()
    partials_superseded_before = (now or datetime.now(UTC)) - PARTIAL_GRACE
    backups = cms.base_backups.list(states=[BaseBackupState.ready])
    instances = {(b.namespace, b.k8s_name): b.instance_id for b in backups}
    for (namespace, k8s_name), instance_id in sorted(instances.items()):
        name = f"{namespace}/{k8s_name}"
        try:
            timelines = {
                (t.system_identifier, t.timeline): t.segments for t in list_timelines(blob, namespace, k8s_name)
            }
            expiring = plan_wal_retention([b for b in backups if b.instance_id == instance_id], timelines, keep)
            by_id = {b.id: b for b in backups}
            deleted = []
            for backup_id in expiring.expired_backups:
                holders = cms.base_backups.expire(backup_id, "retention: older than the kept ones")
                if holders:
                    log(f"{name}: base backup {backup_id} kept, a running restore holds it: {', '.join(holders)}")
                    continue
                deleted.append(backup_id)
                blob.delete_prefix(by_id[backup_id].blob_path)
            # The WAL cut is planned again from what is still ready: a held base backup keeps its WAL.
            still_ready = cms.base_backups.list(instance_id)
            cut = plan_wal_retention(
                still_ready, timelines, max(1, len(still_ready)), partials_superseded_before=partials_superseded_before
            )
            for blob_name in cut.expired_blobs:
                blob.delete_blob(blob_name)
            plan = WalRetentionPlan(expired_backups=deleted, expired_blobs=cut.expired_blobs, kept_from=cut.kept_from)
            outcome.plans[name] = plan
            log(f"{name}: {len(plan.expired_backups)} base backup(s), {len(plan.expired_blobs)} WAL blob(s) removed; "
                f"WAL kept from {plan.kept_from}")  # fmt: skip
        except Exception as error:  # noqa: BLE001 - named, the others go on
            outcome.failed[name] = f"{type(error).__name__}: {error}"
    return outcome


@dg.op(description="Expired base backups and the WAL no kept base backup needs are deleted")
def wal_retention_op(context: dg.OpExecutionContext, cms: CMSResource, blob: BlobStorageResource) -> None:
    outcome = apply_wal_retention(cms, blob, keep_base_backups(), context.log.info)
    if outcome.failed:
        raise dg.Failure("; ".join(f"{k}: {v}" for k, v in outcome.failed.items()))


wal_retention_job = one_op_job(
    wal_retention_op, "wal_retention", MAINTENANCE_KIND, "PITR retention: base backups and their WAL (docs/pitr.md)"
)
wal_retention_daily = every("wal_retention_daily", wal_retention_job, "30 4 * * *", "Runs wal_retention daily")
