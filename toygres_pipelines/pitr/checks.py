"""Checks `wal_archive_fresh` (archive lag under the RPO target) and `wal_archive_continuous` (no
gap since the oldest kept base backup) on the `fleet` asset, every running instance judged, one
that cannot be judged named rather than stopping the others; job `check_wal_archives` and its
schedule. The lag is check metadata (a float per evaluation: the UI plots it over time)."""

from datetime import UTC, datetime

import dagster as dg

from records import Instance, InstanceState
from records.drills import DrillResult
from records.wal import ArchiveHealth, find_gaps
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from resources.wal_archive import list_timelines
from toygres_pipelines.pitr.settings import PitrSettings
from toygres_pipelines.shared import asset_keys
from toygres_pipelines.shared.schedules import every
from toygres_pipelines.shared.tags import CHECKS_KIND, KIND_TAG

FLEET = asset_keys.FLEET
RPO_ENV = PitrSettings.env_name("rpo_target_seconds")
WAL_ARCHIVE_FRESH = dg.AssetCheckKey(FLEET, "wal_archive_fresh")


def archive_health(
    cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource, instance: Instance, now: datetime
) -> ArchiveHealth:
    from records import InstanceRef

    name = f"{instance.namespace}/{instance.k8s_name}"
    why = platform.wal_archiver_error(InstanceRef(k8s_name=instance.k8s_name, namespace=instance.namespace))
    timelines = [t for t in list_timelines(blob, instance.namespace, instance.k8s_name) if t.covered_until]
    if not timelines:
        return ArchiveHealth(instance=name, lag_seconds=None, why=why)
    current = max(timelines, key=lambda t: t.covered_until or now)
    assert current.covered_until is not None
    bases = [
        b
        for b in cms.base_backups.list(instance.id)
        if b.system_identifier == current.system_identifier and b.timeline == current.timeline
    ]
    since = bases[0].start_segment if bases else None
    return ArchiveHealth(
        instance=name,
        lag_seconds=max(0.0, (now - current.covered_until).total_seconds()),
        gaps=[str(g) for g in find_gaps(current.segments, since=since)],
        why=why,
    )


def fleet_archive_health(
    cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
) -> list[ArchiveHealth]:
    now = datetime.now(UTC)
    report = []
    for instance in cms.instances.list([InstanceState.running]):
        try:
            report.append(archive_health(cms, blob, platform, instance, now))
        except Exception as error:  # noqa: BLE001 - named, never stops the others
            report.append(
                ArchiveHealth(
                    instance=f"{instance.namespace}/{instance.k8s_name}",
                    lag_seconds=None,
                    why=f"{type(error).__name__}: {error}",
                )
            )
    return report


def wal_archive_fresh_check(settings: PitrSettings) -> dg.AssetChecksDefinition:
    """`wal_archive_fresh` judged against the deployment's RPO target (TOYGRES_RPO_TARGET_SECONDS)."""
    rpo = settings.rpo_target_seconds

    @dg.asset_check(
        asset=FLEET,
        name=WAL_ARCHIVE_FRESH.name,
        description=f"Every running instance's WAL archive lags less than the RPO target ({RPO_ENV}: "
        f"{rpo:g} s); offenders named with the archiver's last error.",
    )
    def wal_archive_fresh(
        cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
    ) -> dg.AssetCheckResult:
        report = fleet_archive_health(cms, blob, platform)
        stale = [h.describe_lag(rpo) for h in report if not h.fresh(rpo)]
        lags = [h.lag_seconds for h in report if h.lag_seconds is not None]
        return dg.AssetCheckResult(
            passed=not stale,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(stale)
            if stale
            else f"all {len(report)} running instance(s) within the RPO target ({rpo:g} s)",
            metadata={
                "max_lag_seconds": dg.MetadataValue.float(max(lags) if lags else 0.0),
                "rpo_target_seconds": dg.MetadataValue.float(rpo),
                "offenders": dg.MetadataValue.text(", ".join(stale) or "none"),
                "instances": dg.MetadataValue.json([h.model_dump(mode="json") for h in report]),
            },
        )

    return wal_archive_fresh


@dg.asset_check(
    asset=FLEET,
    name="wal_archive_continuous",
    description="No running instance's WAL archive has a gap since its oldest kept base backup.",
)
def wal_archive_continuous(
    cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
) -> dg.AssetCheckResult:
    report = fleet_archive_health(cms, blob, platform)
    broken = [f"{h.instance} ({'; '.join(h.gaps)})" for h in report if h.gaps]
    return dg.AssetCheckResult(
        passed=not broken,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(broken) if broken else f"no gap in {len(report)} running instance(s)' archives",
        metadata={
            "instances_with_gaps": dg.MetadataValue.int(len(broken)),
            "offenders": dg.MetadataValue.text(", ".join(broken) or "none"),
        },
    )


PITR_RESTORABLE_CHECK = "pitr_restorable"


def pitr_restorable_evaluation(cms: CMSResource) -> dg.AssetCheckEvaluation:
    """Each running instance's newest PITR drill (toygres_cms.pitr_drills): an ERROR naming every
    instance whose newest drill failed; metadata: each one's result, target, replayed point and RTO
    (`max_rto_seconds`, a float per evaluation, plots over time). Instances never drilled are
    listed, not failed (the weekly schedule drills each one)."""
    running = {i.id: f"{i.namespace}/{i.k8s_name}" for i in cms.instances.list([InstanceState.running])}
    newest = [d for d in cms.pitr_drills.latest() if d.source_instance_id in running]
    failed = [f"{running[d.source_instance_id]} ({d.reason})" for d in newest if d.result is not DrillResult.passed]
    rtos = [d.rto_seconds for d in newest if d.rto_seconds is not None]
    drilled = {d.source_instance_id for d in newest}
    never = sorted(name for key, name in running.items() if key not in drilled)
    shown = [
        {"instance": running[d.source_instance_id], "result": d.result.value, "run_id": d.run_id,
         "target_time": d.target_time.isoformat() if d.target_time else None,
         "replayed_at": d.replayed_at.isoformat() if d.replayed_at else None,
         "rto_seconds": d.rto_seconds, "finished_at": d.finished_at.isoformat(), "reason": d.reason}
        for d in sorted(newest, key=lambda d: running[d.source_instance_id])
    ]  # fmt: skip
    passed_text = f"the newest PITR drill of {len(newest)} running instance(s) passed"
    return dg.AssetCheckEvaluation(
        asset_key=FLEET,
        check_name=PITR_RESTORABLE_CHECK,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(failed)
        if failed
        else passed_text + (f"; never drilled: {', '.join(never)}" if never else ""),
        metadata={
            "max_rto_seconds": dg.MetadataValue.float(max(rtos) if rtos else 0.0),
            "offenders": dg.MetadataValue.text(", ".join(failed) or "none"),
            "never_drilled": dg.MetadataValue.text(", ".join(never) or "none"),
            "instances": dg.MetadataValue.json(shown),
        },
    )


@dg.asset_check(
    asset=FLEET,
    name=PITR_RESTORABLE_CHECK,
    description="Every running instance's newest PITR drill (job pitr_drill) passed: restored to a point in its "
    "window, replayed point checked, pg_amcheck clean; metadata: result, target, replayed point, RTO. Each drill "
    "reports here; executing the check reports the newest drills again (it does not run one).",
)
def pitr_restorable(cms: CMSResource) -> dg.AssetCheckResult:
    evaluation = pitr_restorable_evaluation(cms)
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )


check_wal_archives = dg.define_asset_job(
    name="check_wal_archives",
    selection=dg.AssetSelection.checks(WAL_ARCHIVE_FRESH, wal_archive_continuous),
    description="Evaluate wal_archive_fresh and wal_archive_continuous for every running instance.",
    tags={KIND_TAG: CHECKS_KIND},
)
wal_archive_checks_schedule = every(
    "wal_archive_checks",
    check_wal_archives,
    "*/5 * * * *",
    "Evaluates wal_archive_fresh and wal_archive_continuous every 5 minutes.",
)
