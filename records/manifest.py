"""manifest.json: an image's own record, written by the backup script beside the dump files."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field

from records.rows import Record


class BackupFile(Record):
    """One file of an image, as the backup script records it in manifest.json."""

    path: str = Field(description="Blob name relative to the image's blob path")
    kind: str = Field(description="globals (pg_dumpall --globals-only) or database (pg_dump -Fc)")
    database: str | None = None
    size_bytes: int
    sha256: str
    row_counts: dict[str, int] | None = Field(
        default=None,
        description="Exact rows per table (key: table_key) in the dump's snapshot; None before format 2",
    )


class BackupManifest(Record):
    """manifest.json, written by the backup script beside the dump files."""

    format_version: int
    image_name: str
    source_instance: str
    source_namespace: str
    postgres_version: str
    server_version_num: int
    dump_format: str
    started_at: datetime
    finished_at: datetime
    tools: dict[str, str]
    files: list[BackupFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def counted(self) -> bool:
        """Whether every database file carries its row counts (format 2 and later)."""
        return all(f.row_counts is not None for f in self.files if f.kind == "database")


# A name that needs no quotes; the key rule is fixed here (not PostgreSQL's quote_ident, whose
# keyword list changes between majors) so a key reads the same whichever server computes it.
_BARE_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


def quoted_name(name: str) -> str:
    if _BARE_NAME.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def table_key(schema: str, table: str) -> str:
    """How row_counts keys a table: schema.table, each part double-quoted (quotes doubled) unless it
    is a bare lower-case identifier, so a dot or quote inside a name never makes a key ambiguous.
    backup.sh computes the same key in SQL (count_rows)."""
    return f"{quoted_name(schema)}.{quoted_name(table)}"
