"""The recoverable window of an instance, computed from the catalogue: its ready base backups
(toygres_cms.base_backups) and its WAL archive (blob storage), and the plan of a restore into it.

earliest: the consistent point of the oldest ready base backup whose WAL is continuous from its
start to the archive's end. latest: the server's time up to which the archive holds every
flushed commit (the newest upload's `covered_until`: the archiver confirmed its receiver had
flushed the server's WAL position of that time before it read the bytes). A gap cuts the
window: it starts after the gap again (the next base backup), and a target across a gap is
refused."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from records import Instance, ValidationFailed
from records.wal import (
    BaseBackup,
    PlanBlob,
    PlanSegment,
    RecoveryPlanFile,
    RecoveryWindow,
    StoredSegment,
    find_gaps,
    newest_partial,
    segment_number,
)
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.wal_archive import Timeline, list_timelines


class WindowState(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: RecoveryWindow | None
    why_none: str | None = None
    bases: list[BaseBackup] = []  # the usable ones (continuous WAL to the end), oldest first
    timeline: Timeline | None = None


def _timeline_of(timelines: list[Timeline], backup: BaseBackup) -> Timeline | None:
    return next(
        (t for t in timelines if t.system_identifier == backup.system_identifier and t.timeline == backup.timeline),
        None,
    )


def window_of(cms: CMSResource, blob: BlobStorageResource, instance: Instance) -> WindowState:
    bases = [b for b in cms.base_backups.list(instance.id) if b.consistent_at is not None]
    if not bases:
        return WindowState(window=None, why_none="no ready base backup")
    timelines = list_timelines(blob, instance.namespace, instance.k8s_name)
    usable: list[BaseBackup] = []
    reasons = []
    timeline = None
    for backup in bases:
        found = _timeline_of(timelines, backup)
        if found is None:
            reasons.append(f"no archived WAL of base backup {backup.id}'s system and timeline")
            continue
        gaps = find_gaps(found.segments, since=backup.start_segment)
        if gaps:
            reasons.append(f"base backup {backup.id}: {gaps[-1]}")
            continue
        usable.append(backup)
        timeline = found
    if not usable or timeline is None or timeline.covered_until is None:
        return WindowState(window=None, why_none="; ".join(reasons) or "no archived WAL")
    earliest = usable[0].consistent_at
    assert earliest is not None
    return WindowState(
        window=RecoveryWindow(earliest=earliest, latest=max(earliest, timeline.covered_until)),
        bases=usable,
        timeline=timeline,
    )


def plan_recovery(
    cms: CMSResource, blob: BlobStorageResource, instance: Instance, target_time: datetime | None
) -> tuple[BaseBackup, RecoveryPlanFile]:
    """The base backup and the WAL a restore of `instance` to `target_time` (None: latest) needs;
    ValidationFailed naming the window (or why there is none) when it cannot be reached."""
    state = window_of(cms, blob, instance)
    field = "target_time" if target_time is not None else "target"
    if state.window is None or state.timeline is None:
        raise ValidationFailed(field, f"{instance.k8s_name} has no recoverable window: {state.why_none}")
    if target_time is not None:
        state.window.check(target_time, field)
        base = [b for b in state.bases if b.consistent_at is not None and b.consistent_at <= target_time][-1]
    else:
        base = state.bases[-1]
    assert base.start_segment is not None and base.sha256 is not None
    needed = _segments_needed(state.timeline.segments, base.start_segment)
    plan = RecoveryPlanFile(
        base=PlanBlob(
            blob=f"{base.blob_path}/base.tar.zst{'.age' if base.encryption_recipient else ''}",
            sha256=base.sha256,
            encrypted=base.encryption_recipient is not None,
        ),
        segments=[
            PlanSegment(blob=s.blob_name, segment=s.segment, sha256=s.sha256 or "", encrypted=s.encrypted)
            for s in needed
        ],
        target_time=target_time,
    )
    return base, plan


def _segments_needed(segments: list[StoredSegment], start: str) -> list[StoredSegment]:
    """From the base backup's start segment on, every complete segment and the partial past them.
    All of them, also for a target: recovery stops at the target, and which segment holds it is
    known only by reading the WAL (an upload time says nothing about a lagging archiver)."""
    first = segment_number(start)
    complete = {s.number: s for s in segments if not s.partial and s.number >= first}
    # The newest upload of the partial: older ones stay (never overwritten) while this restore reads.
    partial = newest_partial(segments, first)
    chosen = [complete[n] for n in sorted(complete)]
    if partial is not None and (not chosen or partial.number > chosen[-1].number):
        chosen.append(partial)
    return chosen
