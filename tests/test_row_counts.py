"""Exact per-table row counts in the manifest, taken in the snapshot the dump reads."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from records.manifest import BackupManifest, table_key
from resources.platform.postgres_server import postgres_bindir
from tests.helpers import materialize_image

# The relations a manifest counts (docs/drills.md): ordinary tables and partitions outside the
# system schemas, not members of an extension; no partitioned parents, views, materialized views,
# foreign or temporary tables.
COUNTED = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
"""


def exact_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(COUNTED).fetchall()
        return {
            table_key(schema, name): conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()[0]
            for schema, name in tables
        }


def test_manifest_records_the_exact_row_count_of_every_table(resources, cms, blob, source, source_dsn):
    assert materialize_image(resources, f"{source.k8s_name}__counted").success
    manifest, _ = blob.read_manifest(cms.images.find(f"{source.k8s_name}__counted").blob_path)

    assert manifest.format_version == 3
    by_database = {f.database: f.row_counts for f in manifest.files if f.kind == "database"}
    assert by_database["pagila"] == exact_counts(source_dsn("pagila"))
    assert by_database["pagila"]["public.rental"] > 16000
    assert "public.payment_p2022_01" in by_database["pagila"]  # partitions count, their parent does not
    assert "public.payment" not in by_database["pagila"]
    assert "public.rental_by_category" not in by_database["pagila"]  # a materialized view is derived data
    assert by_database["postgres"] == {}
    assert [f.row_counts for f in manifest.files if f.kind == "globals"] == [None]


@pytest.fixture
def busy_database(source_dsn):
    """A database whose table gains rows the whole time, with a schema and table named with hostile bytes."""
    name = "row_count_race"
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = source_dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "we.ird"')
        conn.execute('CREATE TABLE "we.ird"."a""b\nc" (v int)')
        conn.execute('INSERT INTO "we.ird"."a""b\nc" SELECT generate_series(1, 3)')
        conn.execute("CREATE TABLE growing (v int)")
    stop = threading.Event()

    def insert_until_stopped() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO growing SELECT generate_series(1, 50)")

    writer = threading.Thread(target=insert_until_stopped)
    writer.start()
    try:
        yield name
    finally:
        stop.set()
        writer.join()
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def rows_in_dump(dump: bytes, table: str) -> int:
    data = subprocess.run(
        [str(postgres_bindir() / "pg_restore"), "--data-only", f"--table={table}", "--file=-"],
        input=dump,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copied = data.split(" FROM stdin;\n", 1)[1].split("\n\\.\n", 1)[0]
    return len(copied.splitlines())


def test_counts_are_taken_in_the_snapshot_the_dump_reads(resources, cms, blob, source, busy_database):
    assert materialize_image(resources, f"{source.k8s_name}__busy").success
    row = cms.images.find(f"{source.k8s_name}__busy")
    manifest, _ = blob.read_manifest(row.blob_path)
    [entry] = [f for f in manifest.files if f.database == busy_database]

    dump = blob.read_bytes(f"{row.blob_path}/{entry.path}")
    assert entry.row_counts is not None
    assert entry.row_counts["public.growing"] == rows_in_dump(dump, "growing") > 0
    assert entry.row_counts['"we.ird"."a""b\nc"'] == 3  # any byte of a name is carried, the key is unambiguous


def test_table_key_quotes_only_what_a_bare_name_could_not_hold():
    assert table_key("public", "rental") == "public.rental"
    assert table_key("we.ird", 'a"b\nc') == '"we.ird"."a""b\nc"'
    assert table_key("Public", "_t$1") == '"Public"._t$1'
    assert table_key("public", "1st") == 'public."1st"'


def test_a_manifest_written_before_row_counts_still_reads():
    old = {
        "format_version": 1,
        "image_name": "x__1",
        "source_instance": "x",
        "source_namespace": "default",
        "postgres_version": "16",
        "server_version_num": 160000,
        "dump_format": "custom",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "tools": {"pg_dump": "pg_dump (PostgreSQL) 16"},
        "files": [{"path": "databases/001.dump", "kind": "database", "database": "d", "size_bytes": 1, "sha256": "a"}],
    }
    manifest = BackupManifest.model_validate(old)
    assert manifest.files[0].row_counts is None
    assert manifest.counted is False


@pytest.fixture
def database_with_short_timeouts(source_dsn):
    name = "row_count_timeouts"
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(source_dsn(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE big AS SELECT generate_series(1, 300000) AS v")
        for setting in ("statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout"):
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = '5ms'").format(sql.Identifier(name), sql.Identifier(setting))
            )
    try:
        yield name
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_databases_own_timeouts_never_cut_the_count_or_the_snapshot_short(
    resources, cms, blob, source, database_with_short_timeouts
):
    assert materialize_image(resources, f"{source.k8s_name}__timeouts").success
    manifest, _ = blob.read_manifest(cms.images.find(f"{source.k8s_name}__timeouts").blob_path)
    [entry] = [f for f in manifest.files if f.database == database_with_short_timeouts]
    assert entry.row_counts == {"public.big": 300000}


def directory_manifest() -> BackupManifest:
    """A parallel-mode manifest: each database a folder of files, its counts on its toc.dat."""
    entry = {"kind": "database", "sha256": "0" * 64, "dump_format": "directory"}
    return BackupManifest.model_validate(
        {
            "format_version": 2,
            "image_name": "i",
            "source_instance": "s",
            "source_namespace": "default",
            "postgres_version": "15",
            "server_version_num": 150000,
            "dump_format": "directory",
            "started_at": "2026-11-26T00:00:00Z",
            "finished_at": "2026-11-26T00:00:01Z",
            "tools": {},
            "files": [
                {"path": "globals.sql", "kind": "globals", "size_bytes": 5, "sha256": "0" * 64},
                {
                    **entry,
                    "path": "databases/001/3001.dat.gz",
                    "database": "app",
                    "archive": "databases/001",
                    "size_bytes": 100,
                },
                {
                    **entry,
                    "path": "databases/001/toc.dat",
                    "database": "app",
                    "archive": "databases/001",
                    "size_bytes": 10,
                    "row_counts": {"public.t": 7, "public.u": 3},
                },
                {
                    **entry,
                    "path": "databases/002/toc.dat",
                    "database": "postgres",
                    "archive": "databases/002",
                    "size_bytes": 4,
                    "row_counts": {},
                },
            ],
        }
    )


def test_a_directory_archive_is_one_database_with_its_counts_on_its_toc():
    from toygres_pipelines.images.contents import database_contents

    manifest = directory_manifest()
    assert manifest.counted
    assert manifest.row_counts_by_database() == {"app": {"public.t": 7, "public.u": 3}, "postgres": {}}
    contents = {c.database: (c.size_bytes, c.rows) for c in database_contents(manifest)}
    assert contents == {"app": (110, 10), "postgres": (4, 0)}


@pytest.fixture
def tables_changed_after_the_dump(source_dsn) -> Iterator[tuple[str, Callable[[], None]]]:
    """A database whose tables z_truncated and z_altered (1000 rows each) are TRUNCATEd and ALTERed
    the moment pg_dump lets go of them: each statement is queued behind pg_dump's lock as soon as
    pg_dump holds it, so it commits right after pg_dump ends (and before anything that reads those
    tables later in the backup)."""
    name = "changed_after_dump"
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = source_dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE a_big AS SELECT generate_series(1, 8000000) AS v")
        conn.execute("CREATE TABLE z_truncated AS SELECT generate_series(1, 1000) AS v")
        conn.execute("CREATE TABLE z_altered AS SELECT generate_series(1, 1000) AS v")
    done: list[str] = []

    def change(statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)
        done.append(statement)

    def queue_changes() -> None:
        deadline = time.monotonic() + 120
        with psycopg.connect(dsn, autocommit=True) as watcher:
            while time.monotonic() < deadline:
                held = watcher.execute(
                    "SELECT count(DISTINCT l.relation) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE a.application_name = 'pg_dump' AND a.datname = current_database() AND l.granted"
                    " AND l.relation IN ('z_truncated'::regclass, 'z_altered'::regclass)"
                ).fetchone()[0]
                if held == 2:
                    break
                time.sleep(0.01)
            else:
                raise TimeoutError("pg_dump never locked the tables")
        for statement in ("TRUNCATE z_truncated", "ALTER TABLE z_altered ALTER v TYPE bigint USING v + 0"):
            threading.Thread(target=change, args=(statement,)).start()

    def wait_for_changes() -> None:
        deadline = time.monotonic() + 120
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(done) == 2, done

    watcher = threading.Thread(target=queue_changes)
    watcher.start()
    try:
        yield name, wait_for_changes
    finally:
        watcher.join()
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_table_changed_right_after_pg_dump_read_it_keeps_the_dumps_count(
    resources, cms, blob, source, source_dsn, tables_changed_after_the_dump
):
    """Issue 19 item 6: the counts are the archive's, so a TRUNCATE or ALTER ... TYPE committed after
    pg_dump finished a table cannot make a manifest disagree with its dump."""
    name, wait_for_changes = tables_changed_after_the_dump
    assert materialize_image(resources, f"{source.k8s_name}__changed").success
    wait_for_changes()
    row = cms.images.find(f"{source.k8s_name}__changed")
    manifest, _ = blob.read_manifest(row.blob_path)
    [entry] = [f for f in manifest.files if f.database == name]
    dump = blob.read_bytes(f"{row.blob_path}/{entry.path}")
    assert entry.row_counts is not None
    assert entry.row_counts["public.z_truncated"] == rows_in_dump(dump, "z_truncated") == 1000
    assert entry.row_counts["public.z_altered"] == rows_in_dump(dump, "z_altered") == 1000
    assert exact_counts(source_dsn(name))["public.z_truncated"] == 0  # the source did change


def test_a_restored_databases_search_path_and_decoys_never_decide_the_drills_counts(platform, pagila_ref, source_dsn):
    """A drill counts the tables of a restored instance, whose databases and roles keep the tenant's
    settings: its schema ahead of pg_catalog, holding a view named pg_class that hides a table and
    its own count(*), must decide neither which tables are counted nor their counts."""
    from pydantic import SecretStr

    from tests.conftest import SOURCE_PASSWORD
    from toygres_pipelines.drills.counting import count_rows

    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS decoyed")
        admin.execute("CREATE DATABASE decoyed")
    try:
        with psycopg.connect(source_dsn("decoyed"), autocommit=True) as tenant:
            tenant.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 3) g")
            tenant.execute("CREATE TABLE hidden AS SELECT g FROM generate_series(1, 5) g")
            tenant.execute("CREATE SCHEMA decoy")
            tenant.execute("CREATE VIEW decoy.pg_class AS SELECT * FROM pg_catalog.pg_class WHERE relname <> 'hidden'")
            tenant.execute("CREATE FUNCTION decoy.keep(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'")
            tenant.execute("CREATE AGGREGATE decoy.count(*) (SFUNC = decoy.keep, STYPE = bigint, INITCOND = '0')")
            tenant.execute("ALTER DATABASE decoyed SET search_path = decoy, pg_catalog")
            tenant.execute("ALTER DATABASE decoyed SET default_transaction_read_only = on")
        counts = count_rows(platform.endpoints(pagila_ref), SecretStr(SOURCE_PASSWORD), "decoyed")
        assert counts == {"public.t": 3, "public.hidden": 5}
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS decoyed WITH (FORCE)")
