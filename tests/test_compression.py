"""Every gzip level this machine's pg_dump offers round-trips pagila, and the manifest says which
level each image was taken with (correctness only; the speed table is in docs/benchmarks.md)."""

from __future__ import annotations

import subprocess

import pytest

from resources.platform.postgres_server import postgres_bindir
from tests.test_streaming_verification import backup_spec
from toygres_pipelines.images.verification import verify_image

pytestmark = pytest.mark.integration

LEVELS = [str(level) for level in range(10)]  # PostgreSQL 15's pg_dump: -Z 0 (none) to 9, gzip only


def restored_sql(dump: bytes, tmp_path, name: str) -> list[str]:
    """The SQL pg_restore makes of an archive, minus the per-run \\restrict keys."""
    path = tmp_path / name
    path.write_bytes(dump)
    sql = subprocess.run(
        [str(postgres_bindir() / "pg_restore"), "--file=-", str(path)], capture_output=True, check=True, text=True
    ).stdout
    return [line for line in sql.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]


def test_pagila_round_trips_through_every_gzip_level_and_the_manifest_records_it(blob, platform, source, tmp_path):
    expected_sql = None
    for level in LEVELS:
        name = f"gzip-{level}"
        platform.run_job(backup_spec(blob, source, name, DUMP_COMPRESSION=level), lambda _line: None)
        manifest, report = verify_image(blob, f"images/{name}")  # full: every byte, pg_restore reads every entry
        assert manifest.compression == ("none" if level == "0" else f"gzip:{level}")
        pagila = next(f for f in manifest.files if f.database == "pagila")
        sql = restored_sql(blob.read_bytes(f"images/{name}/{pagila.path}"), tmp_path, f"{name}.dump")
        assert "COPY public.rental" in "\n".join(sql)
        expected_sql = expected_sql or sql
        assert sql == expected_sql, f"level {level} restores other SQL than level {LEVELS[0]}"
