"""manifest.json: an image's own record, written by the backup script beside the dump files."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field

from records.encryption import ImageEncryption
from records.rows import Record


class StreamCheck(Record):
    """What the backup script proved about a file while it streamed to blob storage."""

    chunk_bytes: int = Field(description="Size of each range hashed (the last one may be shorter)")
    chunk_sha256: list[str] = Field(description="sha256 of each range, in order: what ranges read back must match")
    archive_parsed: bool = Field(
        default=False,
        description="The whole archive was read as it streamed (format 3: the archive reader; before: pg_restore)",
    )


class BackupFile(Record):
    """One file of an image, as the backup script records it in manifest.json."""

    path: str = Field(description="Blob name relative to the image's blob path")
    kind: str = Field(description="globals (pg_dumpall --globals-only) or database (pg_dump -Fc)")
    database: str | None = None
    size_bytes: int
    sha256: str
    row_counts: dict[str, int] | None = Field(
        default=None,
        description="Exact rows per table (key: table_key): from format 3 the rows the archive holds (each "
        "table's own, counted from its COPY data), format 2 count(*) in the dump's snapshot (an inheritance "
        "parent with its children's); None before format 2",
    )
    dump_format: Literal["custom", "directory"] = Field(
        default="custom",
        description="A database's dump: custom (pg_dump -Fc, this one file) or directory (pg_dump -Fd: this file "
        "is one of the directory `archive`)",
    )
    archive: str | None = Field(default=None, description="Directory format: the archive directory this file is in")
    stream_check: StreamCheck | None = None


class BackupManifest(Record):
    """manifest.json, written by the backup script beside the dump files."""

    format_version: int
    compression: str | None = Field(default=None, description="pg_dump -Z of the dumps, as METHOD:LEVEL")
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
    encryption: ImageEncryption | None = Field(
        default=None, description="Set when every file is age-encrypted (sizes and sha256 are of the stored bytes)"
    )
    parallel_jobs: int = 1

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def database_files(self) -> dict[str, list[BackupFile]]:
        """Each database's files in manifest order: its dump, or the files of its directory archive."""
        files: dict[str, list[BackupFile]] = {}
        for f in self.files:
            if f.kind == "database" and f.database is not None:
                files.setdefault(f.database, []).append(f)
        return files

    def row_counts_by_database(self) -> dict[str, dict[str, int] | None]:
        """Each database's row counts (one of its files carries them: its dump, or its archive's
        toc.dat); None for a database the backup did not count (format 1)."""
        return {
            database: next((f.row_counts for f in files if f.row_counts is not None), None)
            for database, files in self.database_files().items()
        }

    @property
    def counts_own_rows(self) -> bool:
        """Format 3 counts each table's own rows (count(*) FROM ONLY); format 2 counted a parent's
        inheritance children with it."""
        return self.format_version >= 3

    @property
    def counted(self) -> bool:
        """Whether every database carries its row counts (format 2 and later)."""
        return all(counts is not None for counts in self.row_counts_by_database().values())


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
    templates/scripts/archive_reader.py computes the same key (the job cannot import this module;
    tests/test_archive_reader.py holds the two equal)."""
    return f"{quoted_name(schema)}.{quoted_name(table)}"
