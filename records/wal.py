"""Continuous WAL archiving: where an instance's WAL lives in blob storage, what a stored segment
is called, and the rules on a sequence of segments (gaps, the recoverable window).

    wal/<namespace>/<k8s_name>/<system identifier>/<timeline, 8 hex>/<segment>.zst[.age]
    wal/<namespace>/<k8s_name>/<system identifier>/<timeline, 8 hex>/<segment>.partial.<upload>.zst[.age]

Every upload of a partial segment is a blob of its own (`<upload>`: when the archiver read it,
UTC to the microsecond), never overwritten: a restore downloads exactly the bytes it planned while
the archiver goes on uploading newer ones. (Archives written before that have
`<segment>.partial.zst`: one blob, rewritten; still read.)

A restored instance has the source's system identifier but its own name (and, once promoted, a
new timeline): it never writes into its source's archive.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from records.errors import ValidationFailed

# 16 MiB segments (initdb's default, the only size this project creates): 256 per xlogid.
SEGMENTS_PER_XLOGID = 0x100
SEGMENT_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
STORED_NAME = re.compile(
    r"(?P<segment>[0-9A-F]{24})(?P<partial>\.partial(?:\.(?P<upload>[0-9]{8}T[0-9]{12}Z))?)?\.zst(?P<age>\.age)?"
)
PARTIAL_UPLOAD_FORMAT = "%Y%m%dT%H%M%S%fZ"
SYSTEM_IDENTIFIER = re.compile(r"[0-9]{1,20}")
SLOT_NAME = "toygres_wal_archiver"
# The instance-row tag naming the base backup a point-in-time restore made it from (it has no
# source_image_id: a base backup is no image row).
PITR_BASE_BACKUP_TAG = "pitr_base_backup"


def wal_prefix(namespace: str, k8s_name: str) -> str:
    return f"wal/{namespace}/{k8s_name}"


def timeline_prefix(namespace: str, k8s_name: str, system_identifier: str, timeline: int) -> str:
    if not SYSTEM_IDENTIFIER.fullmatch(system_identifier):
        raise ValidationFailed("system_identifier", f"must be 1-20 digits, got {system_identifier!r}")
    return f"{wal_prefix(namespace, k8s_name)}/{system_identifier}/{timeline:08X}"


def segment_number(name: str) -> int:
    """The position of a segment in its timeline's sequence (`000000010000000200000003` -> 0x203)."""
    match = SEGMENT_NAME.fullmatch(name)
    if match is None:
        raise ValidationFailed("segment", f"not a WAL segment name (24 hex digits): {name!r}")
    return int(match.group(2), 16) * SEGMENTS_PER_XLOGID + int(match.group(3), 16)


def segment_name(timeline: int, number: int) -> str:
    return f"{timeline:08X}{number // SEGMENTS_PER_XLOGID:08X}{number % SEGMENTS_PER_XLOGID:08X}"


def stored_segment_name(segment: str, encrypted: bool, partial_read_at: datetime | None = None) -> str:
    """A segment's blob name (without its timeline prefix); a partial one's names when it was read."""
    partial = ""
    if partial_read_at is not None:
        partial = f".partial.{partial_read_at.astimezone(UTC).strftime(PARTIAL_UPLOAD_FORMAT)}"
    return f"{segment}{partial}.zst{'.age' if encrypted else ''}"


def segment_of_lsn(timeline: int, lsn: str) -> str:
    """The segment holding an LSN written as PostgreSQL does (`0/3000028`)."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    return segment_name(timeline, (high << 32 | low) // (16 * 2**20))


class StoredSegment(BaseModel):
    """One archived segment (or the partial one being written), as blob storage lists it."""

    model_config = ConfigDict(frozen=True)

    blob_name: str
    segment: str
    partial: bool
    encrypted: bool
    sha256: str | None = None  # of the plaintext segment, from the blob's metadata
    archived_at: datetime | None = None  # when the archiver read the bytes it uploaded
    # The server's time up to which every flushed commit is in these bytes (the receiver had
    # confirmed flushing the server's WAL position of that time); None: not known.
    covered_until: datetime | None = None

    @property
    def number(self) -> int:
        return segment_number(self.segment)


def parse_stored_name(blob_name: str) -> StoredSegment | None:
    """A stored segment from its blob name, or None for anything else under the prefix."""
    match = STORED_NAME.fullmatch(blob_name.rsplit("/", 1)[-1])
    if match is None:
        return None
    return StoredSegment(
        blob_name=blob_name,
        segment=match.group("segment"),
        partial=match.group("partial") is not None,
        encrypted=match.group("age") is not None,
    )


def _upload_order(segment: StoredSegment) -> tuple[datetime, str]:
    return (segment.archived_at or datetime.min.replace(tzinfo=UTC), segment.blob_name)


def newest_partial(segments: list[StoredSegment], first: int = 0) -> StoredSegment | None:
    """The partial upload of the highest segment from `first` on, the last one read of it."""
    partials = [s for s in segments if s.partial and s.number >= first]
    return max(partials, key=lambda s: (s.number, _upload_order(s)), default=None)


def superseded_partials(segments: list[StoredSegment], superseded_before: datetime) -> list[str]:
    """Partial uploads whose bytes a later blob of the same segment holds (the finished segment or a
    later partial: WAL only grows) and which were superseded before `superseded_before`, so no
    restore planned while they were the newest can still be reading them. A partial whose
    successor has no `archived_at` is kept (its age is unknown)."""
    removable = []
    for partial in (s for s in segments if s.partial):
        successors = [
            s
            for s in segments
            if s.number == partial.number
            and s.blob_name != partial.blob_name
            and (not s.partial or _upload_order(s) > _upload_order(partial))
        ]
        if any(s.archived_at is not None and s.archived_at < superseded_before for s in successors):
            removable.append(partial.blob_name)
    return removable


class Gap(BaseModel):
    model_config = ConfigDict(frozen=True)

    after: str  # the last segment present before the gap
    before: str  # the first segment present after it

    def __str__(self) -> str:
        return f"segments missing between {self.after} and {self.before}"


def find_gaps(segments: list[StoredSegment], since: str | None = None) -> list[Gap]:
    """Holes in one timeline's sequence of complete segments (a partial continues the last one).
    With `since`, only from that segment on; a sequence starting after `since` is a gap too."""
    numbers = sorted({s.number for s in segments if not s.partial})
    partials = sorted(s.number for s in segments if s.partial)
    if partials and (not numbers or partials[-1] > numbers[-1]):
        numbers.append(partials[-1])
    if since is not None:
        start = segment_number(since)
        numbers = [n for n in numbers if n >= start]
        if numbers and numbers[0] > start:
            timeline = int(since[:8], 16)
            return [Gap(after=segment_name(timeline, start - 1), before=segment_name(timeline, numbers[0]))] + (
                find_gaps([_bare(timeline, n) for n in numbers])
            )
    if not numbers:
        return []
    timeline = int((segments[0].segment if segments else "00000001")[:8], 16)
    return [
        Gap(after=segment_name(timeline, a), before=segment_name(timeline, b))
        for a, b in zip(numbers, numbers[1:], strict=False)
        if b != a + 1
    ]


def _bare(timeline: int, number: int) -> StoredSegment:
    name = segment_name(timeline, number)
    return StoredSegment(blob_name=name, segment=name, partial=False, encrypted=False)


class RecoveryWindow(BaseModel):
    """The earliest and latest second an instance can be restored to."""

    model_config = ConfigDict(frozen=True)

    earliest: datetime
    latest: datetime

    def __str__(self) -> str:
        return f"{self.earliest.isoformat()} .. {self.latest.isoformat()}"

    def check(self, target: datetime, field: str = "target_time") -> None:
        if target.tzinfo is None:
            raise ValidationFailed(field, "needs a time zone (e.g. 2026-12-04T05:00:00+00:00)")
        if not self.earliest <= target <= self.latest:
            raise ValidationFailed(field, f"{target.isoformat()} is outside the recoverable window {self}")


class BaseBackupState(StrEnum):
    creating = "creating"
    ready = "ready"
    failed = "failed"
    deleted = "deleted"


class BaseBackup(BaseModel):
    """A row of toygres_cms.base_backups: a physical backup (kind `base`) of one instance."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: uuid.UUID
    kind: str = "base"
    instance_id: uuid.UUID
    namespace: str
    k8s_name: str
    state: BaseBackupState
    run_id: str | None = None
    blob_path: str
    postgres_version: str
    system_identifier: str | None = None
    timeline: int | None = None
    start_segment: str | None = None
    consistent_at: datetime | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    encryption_recipient: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime


class BaseBackupResult(BaseModel):
    """What the base backup job wrote into pitr.json beside the backup (its format, declared once)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = 1
    system_identifier: str
    timeline: int
    start_segment: str
    consistent_at: datetime
    size_bytes: int
    sha256: str
    postgres_version: str
    encryption_recipient: str | None = None
    files: list[str]


class PlanBlob(BaseModel):
    model_config = ConfigDict(frozen=True)

    blob: str
    sha256: str
    encrypted: bool


class PlanSegment(BaseModel):
    model_config = ConfigDict(frozen=True)

    blob: str
    segment: str
    sha256: str  # of the plaintext segment
    encrypted: bool


class RecoveryPlanFile(BaseModel):
    """plan.json of a point-in-time restore job: what restore-pitr.sh downloads and replays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: PlanBlob
    segments: list[PlanSegment]
    target_time: datetime | None = None  # None: replay everything archived (`latest`)


class ArchiveHealth(BaseModel):
    """One running instance's archive as the checks judge it (toygres_pipelines/pitr/checks.py)."""

    model_config = ConfigDict(frozen=True)

    instance: str
    lag_seconds: float | None  # now - when the archiver last read WAL it uploaded; None: nothing archived
    gaps: list[str] = []
    why: str | None = None  # a named reason: the archiver's last error, no WAL at all

    def fresh(self, rpo_seconds: float) -> bool:
        return self.lag_seconds is not None and self.lag_seconds <= rpo_seconds

    def describe_lag(self, rpo_seconds: float) -> str:
        if self.lag_seconds is None:
            return f"{self.instance} (no WAL archived{': ' + self.why if self.why else ''})"
        return (
            f"{self.instance} (lag {self.lag_seconds:.0f}s > {rpo_seconds:.0f}s{': ' + self.why if self.why else ''})"
        )


class WalRetentionPlan(BaseModel):
    """What retention removes from one instance's PITR history: expired base backups, and the WAL
    no kept base backup needs (older than the oldest kept one's start, or of a timeline none uses)."""

    model_config = ConfigDict(frozen=True)

    expired_backups: list[uuid.UUID] = []
    expired_blobs: list[str] = []
    kept_from: str | None = None  # the oldest kept base backup's start segment


def plan_wal_retention(
    bases: list[BaseBackup],
    timelines: dict[tuple[str, int], list[StoredSegment]],
    keep: int,
    partials_superseded_before: datetime | None = None,
) -> WalRetentionPlan:
    """Keep the newest `keep` ready base backups (at least one) and every segment from the oldest
    kept one's start on, in its system and timeline and in every timeline after it; another
    system's WAL is never touched. Nothing is removed while no base backup is ready: that WAL is the
    only history there is. With `partials_superseded_before`, the partial uploads superseded before
    then go too (`superseded_partials`)."""
    ready = sorted(
        (b for b in bases if b.state is BaseBackupState.ready and b.consistent_at is not None),
        key=lambda b: b.consistent_at or datetime.min,
    )
    if not ready:
        return WalRetentionPlan()
    kept = ready[-max(1, keep) :]
    oldest = kept[0]
    assert oldest.system_identifier is not None and oldest.timeline is not None and oldest.start_segment
    start = segment_number(oldest.start_segment)
    expired_blobs = []
    for (system, timeline), segments in timelines.items():
        if system != oldest.system_identifier:
            continue  # another system's history (a re-created data directory) is never judged by this one's
        older_timeline = timeline < oldest.timeline
        for segment in segments:
            if older_timeline or (timeline == oldest.timeline and segment.number < start):
                expired_blobs.append(segment.blob_name)
        if partials_superseded_before is not None:
            expired_blobs.extend(superseded_partials(segments, partials_superseded_before))
    expired_blobs = list(set(expired_blobs))
    return WalRetentionPlan(
        expired_backups=[b.id for b in ready[: -len(kept)]] if len(ready) > len(kept) else [],
        expired_blobs=sorted(expired_blobs),
        kept_from=oldest.start_segment,
    )


LATEST = "latest"


def parse_target_time(value: str | None, field: str = "target_time") -> datetime | None:
    """A point-in-time target: ISO 8601 with a time zone, or `latest` (None)."""
    if value is None or value == LATEST:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(field, f"not an ISO 8601 time nor 'latest': {value!r}") from None
    if parsed.tzinfo is None:
        raise ValidationFailed(field, "needs a time zone (e.g. 2026-12-04T05:00:00+00:00)")
    return parsed
