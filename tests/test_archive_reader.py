"""The streamed archive reader (templates/scripts/archive_reader.py): its counts are the rows the
archive holds, equal to count(*) of each table when nothing writes; a damaged archive fails."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from records.manifest import table_key
from resources.platform.base import SCRIPTS_DIR
from resources.platform.postgres_server import available_postgres_versions, postgres_bindir
from tests.conftest import SOURCE_PASSWORD
from tests.test_data_path import HOSTILE_NAMES

READER = SCRIPTS_DIR / "archive_reader.py"
_spec = importlib.util.spec_from_file_location("archive_reader", READER)
assert _spec and _spec.loader
reader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reader)

# Each table's own rows (ONLY: an inheritance parent's children are theirs), the relations a
# manifest counts (docs/drills.md).
COUNTED = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
"""


def exact_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            table_key(schema, name): conn.execute(
                sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()[0]
            for schema, name in conn.execute(COUNTED).fetchall()
        }


def read_custom(dump: bytes) -> tuple[int, dict, str]:
    """The reader as the job runs it: the archive on stdin."""
    done = subprocess.run([sys.executable, str(READER), "custom"], input=dump, capture_output=True, timeout=300)
    result = reader.json.loads(done.stdout) if done.returncode == 0 else {}
    return done.returncode, result, done.stderr.decode()


def compressions(major: str) -> list[str]:
    """Every compression the pg_dump of `major` offers on this machine."""
    if int(major) < 16:
        return [str(level) for level in range(10)]
    offered = ["none"] + [f"gzip:{level}" for level in range(1, 10)]
    for method in ("lz4", "zstd"):
        probe = subprocess.run(
            [str(postgres_bindir(major) / "pg_dump"), "-Z", method, "-f", "/dev/null", "--dbname=host=/nonexistent"],
            capture_output=True,
            text=True,
        )
        if "invalid compression specification" not in probe.stderr:
            offered.append(method)
    return offered


MAJORS = sorted(available_postgres_versions(), key=int)


def pg_dump(major: str, dsn: str, *args: str) -> bytes:
    return subprocess.run(
        [str(postgres_bindir(major) / "pg_dump"), "-w", *args, f"--dbname={dsn}"],
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout


@pytest.fixture(scope="module")
def server_dsn(platform, pagila_ref) -> Callable[[str], str]:
    """source_dsn, for module fixtures."""
    endpoints = platform.endpoints(pagila_ref)
    return lambda database: psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=SOURCE_PASSWORD, dbname=database
    )


@pytest.fixture(scope="module")
def scratch(server_dsn) -> Iterator[Callable[[], str]]:
    """A database of its own on the pagila server; each call empties it and returns its DSN."""
    name = "archive_reader"

    source_dsn = server_dsn

    def fresh() -> str:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return source_dsn(name)

    yield fresh
    with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("major", MAJORS)
def test_pagila_counts_equal_count_star_at_every_compression(source_dsn, major):
    expected = exact_counts(source_dsn("pagila"))
    assert expected["public.rental"] > 16000
    for compression in compressions(major):
        status, result, errors = read_custom(pg_dump(major, source_dsn("pagila"), "-Fc", "-Z", compression))
        assert (status, errors) == (0, ""), compression
        assert result["row_counts"] == expected, compression
        assert "public.payment" not in result["row_counts"]  # a partitioned parent: its partitions count
        assert "public.rental_by_category" not in result["row_counts"]  # a materialized view is derived


def test_a_directory_archive_counts_like_the_custom_one(source_dsn):
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "pagila"
        pg_dump(MAJORS[0], source_dsn("pagila"), "-Fd", "-j", "2", "-Z", "1", "-f", str(target))
        done = subprocess.run(
            [sys.executable, str(READER), "directory", str(target)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert reader.json.loads(done.stdout)["row_counts"] == exact_counts(source_dsn("pagila"))

        # a data file the TOC names, gone: the archive is incomplete
        [data_file] = [p for p in sorted(target.iterdir()) if p.name.endswith(".dat.gz")][:1]
        data_file.unlink()
        done = subprocess.run([sys.executable, str(READER), "directory", str(target)], capture_output=True, text=True)
        assert done.returncode == 1
        assert "is missing" in done.stderr


names = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12),
).filter(lambda name: len(name.encode()) <= 63)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
rows = st.lists(st.tuples(values, st.binary(max_size=40), st.integers(-(2**62), 2**62)), max_size=30)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tables=st.dictionaries(st.tuples(names, names), rows, min_size=1, max_size=4),
    major=st.sampled_from(MAJORS),
    data=st.data(),
)
def test_counts_equal_count_star_for_any_names_rows_and_compression(scratch, tables, major, data):
    compression = data.draw(st.sampled_from(compressions(major)))
    dsn = scratch()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (schema, table), content in tables.items():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL("CREATE TABLE {}.{} (t text, b bytea, n numeric)").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )
            with conn.cursor().copy(
                sql.SQL("COPY {}.{} FROM STDIN").format(sql.Identifier(schema), sql.Identifier(table))
            ) as copy:
                for row in content:
                    copy.write_row(row)
    status, result, errors = read_custom(pg_dump(major, dsn, "-Fc", "-Z", compression))
    assert (status, errors) == (0, "")
    assert result["row_counts"] == exact_counts(dsn)
    assert result["row_counts"] == {table_key(s, t): len(content) for (s, t), content in tables.items()}


@pytest.fixture(scope="module")
def odd_tables(scratch) -> str:
    """Empty tables, a row larger than many compressed blocks, bytea, an inheritance parent and child,
    and an extension's configuration table (CREATE EXTENSION makes it on restore: not counted)."""
    dsn = scratch()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE empty_one (v int)")
        conn.execute('CREATE TABLE "Empty Two" (v text)')
        conn.execute("CREATE TABLE huge (t text, b bytea)")
        huge = os.urandom(3 * 1024 * 1024)
        conn.execute("INSERT INTO huge VALUES (%s, %s), ('small', '\\x00'), (%s, NULL)", (huge.hex(), huge, "x\ny\\z"))
        conn.execute("CREATE TABLE parent (v int)")
        conn.execute("CREATE TABLE child (w int) INHERITS (parent)")
        conn.execute("INSERT INTO parent SELECT generate_series(1, 5)")
        conn.execute("INSERT INTO child SELECT g, g FROM generate_series(1, 7) g")
        conn.execute("SELECT lo_from_bytea(0, 'a large object')")
    return dsn


@pytest.mark.parametrize("major", MAJORS)
def test_empty_tables_huge_rows_bytea_inheritance_and_large_objects(odd_tables, major):
    for compression in ("0", "1", "9") if int(major) < 16 else ("none", "gzip:1"):
        status, result, errors = read_custom(pg_dump(major, odd_tables, "-Fc", "-Z", compression))
        assert (status, errors) == (0, ""), compression
        assert (
            result["row_counts"]
            == exact_counts(odd_tables)
            == {
                "public.empty_one": 0,
                'public."Empty Two"': 0,
                "public.huge": 3,
                "public.parent": 5,
                "public.child": 7,
            }
        )
        assert result["data_bytes"] > 9 * 1024 * 1024


def data_start(dump: bytes) -> int:
    """Where the archive's data blocks begin (after the header and the TOC)."""
    source = reader.Input(io.BytesIO(dump), "archive")
    reader.Archive(source)
    return source.pos


@pytest.fixture(scope="module")
def pagila_dump(server_dsn) -> bytes:
    return pg_dump(MAJORS[0], server_dsn("pagila"), "-Fc", "-Z", "1")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_archive_fails(pagila_dump, cut):
    status, _, errors = read_custom(pagila_dump[: int(len(pagila_dump) * cut)])
    assert status == 1
    assert errors.startswith("archive_reader: archive: ")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
@example(where=0.8531243185476801, bit=5)  # found by this property: a flip the data does not see
def test_a_bit_flipped_data_block_fails_unless_it_holds_the_same_data(pagila_dump, where, bit):
    """Deflate has bits no decoder reads (a code length of a distance code no block uses, with the
    longest length: the other codes stay the same), so a flip there leaves every byte of the data
    and its checksum as they were. The property: no damaged archive passes with other data."""
    start = data_start(pagila_dump)
    position = start + int((len(pagila_dump) - start) * where)
    damaged = bytearray(pagila_dump)
    damaged[position] ^= 1 << bit
    status, _, errors = read_custom(bytes(damaged))
    if status == 0:
        assert restored_sql(bytes(damaged)) == restored_sql(pagila_dump), f"byte {position} bit {bit}"
        return
    assert status == 1, f"byte {position} bit {bit}"
    assert errors.startswith("archive_reader: archive: ")


def restored_sql(dump: bytes) -> bytes:
    """Everything pg_restore reads from an archive, data included, as SQL (but for its \\restrict
    lines: a random key each run)."""
    text = subprocess.run(
        [str(postgres_bindir(MAJORS[0]) / "pg_restore"), "-f", "-"],
        input=dump,
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    return b"\n".join(line for line in text.split(b"\n") if not line.startswith((b"\\restrict ", b"\\unrestrict ")))


def test_a_flipped_sign_byte_fails_even_where_the_value_reads_the_same(pagila_dump):
    """pg_dump writes an integer's sign byte as 0 or 1; a chunk list's terminating zero with a
    flipped sign still reads as 0 (minus zero), so only the byte itself shows the damage (the
    bit-flip property above found one)."""
    source = reader.Input(io.BytesIO(pagila_dump), "archive")
    archive = reader.Archive(source)
    source.byte_or_eof()
    archive.read_int()
    for _ in reader.chunks(archive):
        pass
    terminator = source.pos - 1 - archive.int_size  # the first data block's closing zero: sign byte
    for bit in range(8):
        damaged = bytearray(pagila_dump)
        damaged[terminator] ^= 1 << bit
        status, _, errors = read_custom(bytes(damaged))
        assert status == 1, f"bit {bit}"
        assert errors.startswith("archive_reader: archive: ")


def test_a_data_entry_without_its_data_fails(pagila_dump):
    """The TOC promises a table's data; the stream ends cleanly before it (a block boundary)."""
    archive = reader.Archive(reader.Input(io.BytesIO(pagila_dump), "archive"))
    ends = []  # offsets where a data block ends: a cut there leaves whole blocks only
    source = reader.Input(io.BytesIO(pagila_dump), "archive")
    archive = reader.Archive(source)
    while source.byte_or_eof() is not None:
        archive.read_int()
        for _ in reader.chunks(archive):
            pass
        ends.append(source.pos)
    status, _, errors = read_custom(pagila_dump[: ends[len(ends) // 2]])
    assert status == 1
    assert "TOC entries without their data" in errors


@given(schema=st.text(), table=st.text())
def test_the_reader_keys_tables_exactly_like_the_manifest(schema, table):
    assert reader.table_key(schema, table) == table_key(schema, table)


def test_progress_follows_the_table_data_to_100_percent(source_dsn, tmp_path):
    """The backup's percent (issue 23): the table data read so far against the tables' sizes on the
    source (templates/scripts/table_sizes.sql, as the job reads them), never going back, ending at 1."""
    dump = pg_dump(MAJORS[0], source_dsn("pagila"), "-Fc")
    sizes = tmp_path / "sizes.json"
    with psycopg.connect(source_dsn("pagila")) as conn:
        sizes.write_text(reader.json.dumps(conn.execute((SCRIPTS_DIR / "table_sizes.sql").read_text()).fetchone()[0]))
    seen: list[float] = []
    progress = reader.Progress(str(tmp_path / "seen.json"), reader.json.loads(sizes.read_text()))
    progress.written = seen.append
    assert reader.read_custom(io.BytesIO(dump), progress)["row_counts"] == exact_counts(source_dsn("pagila"))
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(seen) >= 10 and seen[0] < 0.5  # it moves while the data streams, not only at the end

    # As the job runs it: the flags, the progress file at the end
    out = tmp_path / "progress.json"
    done = subprocess.run(
        [sys.executable, str(READER), "custom", "--sizes", str(sizes), "--progress", str(out)],
        input=dump, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert reader.json.loads(out.read_text()) == {"fraction": 1.0}

    # Sizes that name no table of the archive: no percent, and the counts stand
    none = tmp_path / "none.json"
    none.write_text('[["other", "table", 8192]]')
    done = subprocess.run(
        [sys.executable, str(READER), "custom", "--sizes", str(none), "--progress", str(tmp_path / "p2.json")],
        input=dump, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and not (tmp_path / "p2.json").exists()
