"""Parallel mode of a backup: each database dumped by `pg_dump -Fd -j N` (directory format, one
file per table) and restored by `pg_restore -j N`. pg_dump parallelises across tables, so it pays
off for databases with several large tables (see docs/benchmarks.md, "Parallel mode")."""

from __future__ import annotations

from records.errors import ValidationFailed

SINGLE_STREAM = 1
# Each job is one more connection to the source and one more CPU for the job pod.
MAX_PARALLEL_JOBS = 16


def validate_parallel_jobs(value: int, field: str = "parallel_jobs") -> int:
    if not SINGLE_STREAM <= value <= MAX_PARALLEL_JOBS:
        raise ValidationFailed(field, f"{value} must be between {SINGLE_STREAM} and {MAX_PARALLEL_JOBS}")
    return value
