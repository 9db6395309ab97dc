#!/usr/bin/env python3
"""Read a pg_dump archive once, as it streams: every TOC entry, every data block inflated, the rows
of every table counted from the archive itself.

    archive_reader.py custom [--sizes SIZES --progress PROGRESS] < DUMP
                                             a custom-format archive (pg_dump -Fc) on stdin
    archive_reader.py directory DIRECTORY    a directory archive (pg_dump -Fd): toc.dat + its files

Prints one JSON object: {"row_counts": {key: rows}, "data_bytes": N, "data_entries": N}. Exit 1 with
the reason on stderr when the archive is truncated, a block does not decode, or a TOC data entry
has no data. After an error on stdin the rest of the input is drained, so a `tee` feeding this never
blocks. Standard library only (zstd/lz4 archives need the `zstandard`/`lz4` modules; `isal`, when
there, inflates gzip faster).

The format is pg_dump's own (src/bin/pg_dump/pg_backup_archiver.c ReadHead/ReadToc,
pg_backup_custom.c, pg_backup_directory.c). Rows: COPY text, one newline per row (a newline inside
a value is written as the two characters backslash n). Counted: a TABLE DATA entry whose table has
its own TABLE entry in the archive (an extension's configuration table has none: CREATE EXTENSION
makes it on restore, so its restored count is not the archive's). The key is records/manifest.py
table_key (tests/test_archive_reader.py holds the two equal).

Progress (custom archives): with SIZES (table_sizes.sql's [[schema, table, bytes], ...]) the share of
the tables' size read so far goes to PROGRESS as {"fraction": F}, rewritten at each percent and at
the end. The table being read counts by its COPY bytes so far against its size times the ratio of
COPY bytes to size of the tables already read (text is wider or narrower than the heap).
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib

try:  # ISA-L's inflate, about twice zlib's speed (the job image has it; the standard zlib otherwise)
    from isal import isal_zlib as fast_zlib
except ImportError:
    fast_zlib = zlib
from collections.abc import Callable, Iterator
from typing import IO

MAGIC = b"PGDMP"
FORMAT_CUSTOM, FORMAT_DIRECTORY = 1, 3  # the header byte pg_dump -Fc and -Fd write
BLK_DATA, BLK_BLOBS = 1, 3
K_OFFSET_NO_DATA = 3
# pg_dump before 18 ends each table's COPY data with the end marker and two blank lines; a row can
# never be the line `\.` (COPY text writes a backslash as two)
END_OF_COPY = b"\n\\.\n\n\n"
READ_SIZE = 1 << 20
# Archive versions (major, minor, revision) this reader knows: 1.12 (PostgreSQL 9.5) to 1.16 (17)
OLDEST, NEWEST = (1, 12, 0), (1, 16, 0)
GZIP, LZ4, ZSTD, NONE = "gzip", "lz4", "zstd", "none"
_BARE_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


class ArchiveError(Exception):
    pass


def quoted_name(name: str) -> str:
    return name if _BARE_NAME.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def table_key(schema: str, table: str) -> str:
    return f"{quoted_name(schema)}.{quoted_name(table)}"


class Input:
    """Bytes from a file object, read in large pieces; running out is a truncated archive."""

    def __init__(self, stream: IO[bytes], what: str) -> None:
        self.stream, self.what = stream, what
        self.buf, self.pos = b"", 0

    def _fill(self, n: int) -> bool:
        have = len(self.buf) - self.pos
        parts = [self.buf[self.pos :]]
        while have < n:
            piece = self.stream.read(max(READ_SIZE, n - have))
            if not piece:
                self.buf, self.pos = b"".join(parts), 0
                return False
            parts.append(piece)
            have += len(piece)
        self.buf, self.pos = b"".join(parts), 0
        return True

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf) and not self._fill(n):
            raise ArchiveError(f"{self.what}: truncated (ends inside an item)")
        end = self.pos + n
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def byte_or_eof(self) -> int | None:
        if self.pos >= len(self.buf) and not self._fill(1):
            return None
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def drain(self) -> None:
        while self.stream.read(READ_SIZE):
            pass


class Archive:
    """The header and TOC of an archive (ReadHead, ReadToc)."""

    def __init__(self, source: Input) -> None:
        self.source = source
        if source.read(5) != MAGIC:
            raise ArchiveError(f"{source.what}: not a pg_dump archive (no PGDMP header)")
        self.version = tuple(source.read(3))
        if not OLDEST <= self.version <= NEWEST:
            raise ArchiveError(f"{source.what}: archive version {'.'.join(map(str, self.version))} is not supported")
        self.int_size, self.off_size, self.format = source.read(3)
        if self.format not in (FORMAT_CUSTOM, FORMAT_DIRECTORY):
            raise ArchiveError(f"{source.what}: archive format {self.format} is neither custom nor directory")
        if self.version >= (1, 15, 0):
            algorithm = source.read(1)[0]
            self.compression = {0: NONE, 1: GZIP, 2: LZ4, 3: ZSTD}.get(algorithm)
            if self.compression is None:
                raise ArchiveError(f"{source.what}: unknown compression algorithm {algorithm}")
        else:
            self.compression = NONE if self.read_int() == 0 else GZIP
        for _ in range(7):  # the dump's time
            self.read_int()
        self.read_str(), self.read_str(), self.read_str()  # database, server and pg_dump versions
        self.entries = [self._read_entry() for _ in range(self.read_int())]

    def read_int(self) -> int:
        raw = self.source.read(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        # pg_dump's WriteInt writes the sign as 0 or 1, and never a negative zero
        if raw[0] > 1 or (raw[0] == 1 and value == 0):
            raise ArchiveError(f"{self.source.what}: an integer's sign byte is {raw[0]} (value {value})")
        return -value if raw[0] else value

    def read_str(self) -> str | None:
        length = self.read_int()
        if length < 0:
            return None
        return self.source.read(length).decode("utf-8", errors="surrogateescape")

    def _read_entry(self) -> dict:
        v = self.version
        entry: dict = {"id": self.read_int()}
        self.read_int()  # had a data dumper
        self.read_str(), self.read_str()  # table oid, oid
        entry["tag"] = self.read_str()
        entry["desc"] = self.read_str()
        self.read_int()  # section
        for _ in range(3):  # defn, drop statement, copy statement
            self.read_str()
        entry["namespace"] = self.read_str()
        self.read_str()  # tablespace
        if v >= (1, 14, 0):
            self.read_str()  # table access method
        if v >= (1, 16, 0):
            self.read_int()  # relkind
        self.read_str(), self.read_str()  # owner, "with oids"
        while self.read_str() is not None:  # dependencies
            pass
        if self.format == FORMAT_CUSTOM:
            flag = self.source.read(1)[0]
            self.source.read(self.off_size)
            entry["has_data"] = flag != K_OFFSET_NO_DATA
        else:
            entry["file"] = self.read_str() or ""
            entry["has_data"] = bool(entry["file"])
        return entry

    def counted_entries(self) -> dict[int, str]:
        """TABLE DATA entries whose table the archive itself creates: dump id -> row_counts key."""
        tables = {(e["namespace"], e["tag"]) for e in self.entries if e["desc"] == "TABLE"}
        return {
            e["id"]: table_key(e["namespace"] or "", e["tag"] or "")
            for e in self.entries
            if e["desc"] == "TABLE DATA" and e["has_data"] and (e["namespace"], e["tag"]) in tables
        }


def decompressor(method: str, what: str) -> tuple[Callable[[bytes], bytes], Callable[[], bool]]:
    """(feed, finished): feed inflates one piece; finished says the stream ended exactly."""
    if method == NONE:
        return (lambda data: data), (lambda: True)
    if method == GZIP:
        d = fast_zlib.decompressobj(47)  # zlib or gzip header, detected
        return d.decompress, (lambda: d.eof and not d.unused_data)
    try:
        if method == ZSTD:
            import zstandard

            z = zstandard.ZstdDecompressor().decompressobj()
            return z.decompress, (lambda: z.eof and not z.unused_data)
        import lz4.frame

        f = lz4.frame.LZ4FrameDecompressor()
        return f.decompress, (lambda: f.eof and not f.unused_data)
    except ImportError:
        raise ArchiveError(f"{what}: {method}-compressed, and this reader has no {method} module") from None


class Progress:
    """The share of the archive's tables read so far, weighed by their sizes on the source."""

    def __init__(self, path: str, sizes: list) -> None:
        self.path = path
        self.sizes: dict[str, int] = {}
        for schema, table, size in sizes:
            self.sizes[table_key(str(schema), str(table))] = max(int(size), 0)
        self.total = self.done_size = self.done_text = self.size = self.text = 0
        self.shown = -1

    def begin(self, counted: dict[int, str]) -> None:
        self.total = sum(self.sizes.get(key, 0) for key in counted.values())

    def table(self, key: str | None) -> None:
        self.done_size += self.size
        self.done_text += self.text
        self.size, self.text = (self.sizes.get(key, 0) if key else 0), 0

    def read(self, n: int) -> None:
        self.text += n
        if self.total:
            self.show(False)

    def fraction(self) -> float:
        ratio = self.done_text / self.done_size if self.done_size and self.done_text else 1.0
        current = min(self.text / (ratio * self.size), 0.99) * self.size if self.size else 0.0
        return min((self.done_size + current) / self.total, 0.99)

    def show(self, finished: bool) -> None:
        fraction = 1.0 if finished else self.fraction()
        if finished or int(fraction * 100) > self.shown:
            self.shown = int(fraction * 100)
            self.written(fraction)

    def written(self, fraction: float) -> None:
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"fraction": round(fraction, 4)}, f)
        os.replace(self.path + ".tmp", self.path)

    def finish(self) -> None:
        if self.total:
            self.show(True)


class Totals:
    def __init__(self, progress: Progress | None = None) -> None:
        self.rows: dict[str, int] = {}
        self.data_bytes = 0
        self.progress = progress

    def inflate(self, pieces: Iterator[bytes], method: str, what: str, key: str | None) -> None:
        """Inflate one stream; count its newlines when it is a table's COPY data (key)."""
        feed, finished = decompressor(method, what)
        progress = self.progress
        if progress is not None:
            progress.table(key)
        newlines = size = 0
        tail = b"\n"  # the data's last bytes (a newline before the start: a row starts there)
        try:
            for piece in pieces:
                out = feed(piece)
                if out:
                    size += len(out)
                    newlines += out.count(b"\n")
                    tail = (tail + out)[-len(END_OF_COPY) :]
                    if progress is not None:
                        progress.read(len(out))
        except Exception as error:  # zlib.error, zstd's and lz4's own errors
            raise ArchiveError(f"{what}: a data block does not decode ({error})") from None
        if not finished():
            raise ArchiveError(f"{what}: its compressed data ends before the stream does")
        if key is not None:
            if tail == END_OF_COPY:
                newlines -= END_OF_COPY.count(b"\n") - 1
            elif not tail.endswith(b"\n"):
                raise ArchiveError(f"{what}: its COPY data does not end with a whole row")
            self.rows[key] = self.rows.get(key, 0) + newlines
        self.data_bytes += size

    def result(self, archive: Archive) -> dict:
        return {"row_counts": self.rows, "data_bytes": self.data_bytes, "data_entries": len(archive.counted_entries())}


def chunks(archive: Archive) -> Iterator[bytes]:
    """The length-prefixed chunks of one custom-format data item, up to its zero terminator."""
    read_int, read = archive.read_int, archive.source.read
    while True:
        length = read_int()
        if length == 0:
            return
        if length < 0:
            raise ArchiveError(f"{archive.source.what}: a data chunk has a negative length")
        yield read(length)


def read_custom(stream: IO[bytes], progress: Progress | None = None) -> dict:
    source = Input(stream, "archive")
    archive = Archive(source)
    if archive.format != FORMAT_CUSTOM:
        raise ArchiveError("archive: a directory archive's toc.dat, not a custom-format archive")
    counted = archive.counted_entries()
    expected = {e["id"]: e for e in archive.entries if e["has_data"]}
    seen: set[int] = set()
    totals = Totals(progress)
    if progress is not None:
        progress.begin(counted)
    while (block := source.byte_or_eof()) is not None:
        dump_id = archive.read_int()
        entry = expected.get(dump_id)
        if entry is None or dump_id in seen:
            raise ArchiveError(f"archive: a data block for TOC entry {dump_id}, which has no data or had it already")
        seen.add(dump_id)
        what = f"archive: {entry['desc']} {entry['namespace'] or ''}.{entry['tag'] or ''} (entry {dump_id})"
        if block == BLK_DATA:
            totals.inflate(chunks(archive), archive.compression, what, counted.get(dump_id))
        elif block == BLK_BLOBS:
            while archive.read_int() != 0:  # each large object: its oid, then its data
                totals.inflate(chunks(archive), archive.compression, what, None)
        else:
            raise ArchiveError(f"archive: unknown data block type {block}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"archive: TOC entries without their data: {' '.join(map(str, missing))}")
    if progress is not None:
        progress.table(None)
        progress.finish()
    return totals.result(archive)


def file_pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(READ_SIZE):
            yield piece


def read_directory(directory: str) -> dict:
    with open(os.path.join(directory, "toc.dat"), "rb") as toc:
        archive = Archive(Input(toc, "toc.dat"))
    if archive.format != FORMAT_DIRECTORY:
        raise ArchiveError("toc.dat: not a directory archive's table of contents")
    method = archive.compression
    suffix = {NONE: "", GZIP: ".gz", LZ4: ".lz4", ZSTD: ".zst"}[method]
    counted = archive.counted_entries()
    totals = Totals()

    def inflate_file(name: str, what: str, key: str | None) -> None:
        path = os.path.join(directory, name)
        if os.path.exists(path + suffix):
            path += suffix
        elif suffix and os.path.exists(path):  # pg_dump writes a file it could not compress plain
            method_here = NONE
            totals.inflate(file_pieces(path), method_here, what, key)
            return
        else:
            raise ArchiveError(f"{what}: its data file {name}{suffix} is missing")
        totals.inflate(file_pieces(path), method, what, key)

    for entry in archive.entries:
        if not entry["has_data"]:
            continue
        what = f"{entry['file']}: {entry['desc']} {entry['namespace'] or ''}.{entry['tag'] or ''} (entry {entry['id']})"
        if entry["file"].endswith(".toc"):  # large objects: a list of "oid file" lines
            with open(os.path.join(directory, entry["file"]), encoding="utf-8") as listing:
                for line in listing:
                    if line.strip():
                        inflate_file(line.split()[1], what, None)
        else:
            inflate_file(entry["file"], what, counted.get(entry["id"]))
    return totals.result(archive)


def main(argv: list[str]) -> int:
    if argv[:1] == ["custom"] and len(argv) in (1, 5) and (len(argv) == 1 or argv[1::2] == ["--sizes", "--progress"]):
        stdin = sys.stdin.buffer
        progress = None
        if len(argv) == 5:
            try:
                with open(argv[2], encoding="utf-8") as sizes:
                    progress = Progress(argv[4], json.load(sizes))
            except (OSError, ValueError, TypeError):  # no sizes: counts without a percent
                progress = None
        try:
            result = read_custom(stdin, progress)
        except ArchiveError as error:
            print(f"archive_reader: {error}", file=sys.stderr)
            Input(stdin, "archive").drain()
            return 1
    elif argv[:1] == ["directory"] and len(argv) == 2:
        try:
            result = read_directory(argv[1])
        except (ArchiveError, OSError) as error:
            print(f"archive_reader: {error}", file=sys.stderr)
            return 1
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
