"""What an image holds, database by database: for its Dagster metadata and `images --show`."""

from __future__ import annotations

import dagster as dg
from pydantic import BaseModel

from records import BackupManifest
from records.units import human_bytes


class DatabaseContents(BaseModel):
    """One database of an image: its dump's size, and its rows when the manifest counted them."""

    database: str
    path: str
    size_bytes: int
    rows: int | None = None


def database_contents(manifest: BackupManifest) -> list[DatabaseContents]:
    counts = manifest.row_counts_by_database()
    return [
        DatabaseContents(
            database=database,
            path=files[0].archive or files[0].path,
            size_bytes=sum(f.size_bytes for f in files),
            rows=None if (rows := counts[database]) is None else sum(rows.values()),
        )
        for database, files in manifest.database_files().items()
    ]


DATABASES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("database", "string", description="its exact name: what a selective restore names"),
        dg.TableColumn("size", "string", description="the size of its dump"),
        dg.TableColumn("size_bytes", "int"),
        dg.TableColumn("rows", "string", description="rows in its tables, when the manifest counted them"),
    ]
)


def databases_table(manifest: BackupManifest) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "database": entry.database,
                    "size": human_bytes(entry.size_bytes),
                    "size_bytes": entry.size_bytes,
                    "rows": "" if entry.rows is None else str(entry.rows),
                }
            )
            for entry in database_contents(manifest)
        ],
        schema=DATABASES_SCHEMA,
    )
