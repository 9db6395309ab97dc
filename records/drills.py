"""Restore drills: what one drill recorded, and the rules that judge an image's drills."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from records.rows import Record

GIB = 1024**3


class DrillResult(StrEnum):
    running = "running"
    passed = "passed"  # restored, and every table's row count equals the manifest's
    failed = "failed"  # the restore failed, or counts differ: the image is not restorable
    uncounted = "uncounted"  # restored, but the manifest (format 1) has no counts to compare


# A restore that worked proves the image restorable; only `passed` also proves its contents.
RESTORED = (DrillResult.passed, DrillResult.uncounted)


class Drill(Record):
    """A row of toygres_cms.restore_drills."""

    id: uuid.UUID
    image_id: uuid.UUID
    source_instance_id: uuid.UUID | None = None
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    result: DrillResult
    recovery_seconds: float | None = None
    seconds_per_gib: float | None = None
    backup_size_bytes: int | None = None
    tables_checked: int | None = None
    reason: str | None = None


def seconds_per_gib(seconds: float, size_bytes: int | None) -> float | None:
    """Recovery seconds per GiB of backup; None for an image of unknown or zero size."""
    if not size_bytes:
        return None
    return seconds / (size_bytes / GIB)


def count_differences(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """Every table whose restored row count is not the manifest's, in key order, one line each."""
    lines = []
    for key in sorted(expected.keys() | found.keys()):
        want, got = expected.get(key), found.get(key)
        if want != got:
            lines.append(
                f"{key}: manifest {'-' if want is None else want}, restored {'missing' if got is None else got}"
            )
    return lines


class PitrDrill(Record):
    """A row of toygres_cms.pitr_drills: one finished PITR drill (toygres_pipelines/drills/pitr_drill.py)."""

    id: uuid.UUID
    source_instance_id: uuid.UUID
    base_backup_id: uuid.UUID | None = None
    run_id: str | None = None
    started_at: datetime
    finished_at: datetime
    result: DrillResult  # passed or failed
    target_time: datetime | None = None
    replayed_at: datetime | None = None  # the last transaction replayed (pg_last_xact_replay_timestamp)
    rto_seconds: float | None = None  # drill start to the scratch instance running
    scratch: str | None = None
    reason: str | None = None
