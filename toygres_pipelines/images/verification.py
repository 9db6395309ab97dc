"""Proof that an image in blob storage is whole and restorable, before anyone relies on it."""

from __future__ import annotations

import functools
import hashlib
import random
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from azure.core.exceptions import ResourceNotFoundError
from pydantic import BaseModel

from records import BackupFile, BackupManifest
from records.encryption import AGE_HEADER
from records.units import human_bytes
from resources.blob import MANIFEST_NAME, BlobStorageResource
from resources.platform.postgres_server import newest_postgres_bindir


class ImageCorrupt(RuntimeError):
    pass


class FileCheck(BaseModel):
    path: str
    size_bytes: int
    sha256: str
    archive_readable: bool | None = None
    kind: str = ""
    database: str | None = None
    encrypted: bool = False
    # Set when the file was checked against what the backup proved while it streamed (no full read)
    ranges_checked: int | None = None
    ranges_total: int | None = None

    @property
    def holds(self) -> str:
        return f"database {self.database}" if self.database else self.kind

    @property
    def verdict(self) -> str:
        if self.ranges_total is None:
            verdict = "sha256 matches" + (", pg_restore reads every entry" if self.archive_readable else "")
        else:
            verdict = (
                f"size in blob storage matches, {self.ranges_checked} of {self.ranges_total} ranges read back match "
                "the hashes taken while it streamed"
                + ("; the archive reader read every block of it while it streamed" if self.archive_readable else "")
            )
        return verdict + (", age-encrypted (stored bytes checked without the key)" if self.encrypted else "")


FULL_METHOD = "full re-read: every byte downloaded and hashed, pg_restore reads every dump"
STREAMED_METHOD = (
    "streamed: the archive reader read every block of every dump while it streamed to blob storage; blob "
    "storage's sizes match, and the first, the last and a random range of each file read back match the hashes "
    "taken from the stream"
)


class VerificationReport(BaseModel):
    manifest_sha256: str
    total_bytes: int
    files: list[FileCheck]
    method: str = FULL_METHOD


def _hash_and_read(blob: BlobStorageResource, name: str, is_dump: bool) -> FileCheck:
    """One download: hash every byte and, for a dump, have `pg_restore` read the whole archive
    (every entry decompressed, the SQL thrown away), so a damaged archive is caught here."""
    digest = hashlib.sha256()
    size = 0
    reader = None
    if is_dump:
        reader = subprocess.Popen(
            [str(newest_postgres_bindir() / "pg_restore"), "--file=/dev/null"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        errors: list[bytes] = []
        stderr = reader.stderr
        assert stderr is not None  # stderr=PIPE
        drain = threading.Thread(target=lambda: errors.append(stderr.read()))
        drain.start()
    for chunk in blob.iter_chunks(name):
        digest.update(chunk)
        size += len(chunk)
        if reader is not None and reader.stdin is not None:
            try:
                reader.stdin.write(chunk)
            except BrokenPipeError:
                reader.stdin = None  # pg_restore gave up; keep hashing, its exit code says why
    if reader is not None:
        if reader.stdin is not None:
            reader.stdin.close()
        returncode = reader.wait(timeout=600)
        drain.join()
        if returncode != 0:
            message = b"".join(errors).decode(errors="replace").strip()
            raise ImageCorrupt(f"{name}: pg_restore cannot read it: {message or f'exit code {returncode}'}")
    return FileCheck(path=name, size_bytes=size, sha256=digest.hexdigest(), archive_readable=is_dump or None)


# pg_restore reads lz4 and zstd archives from PostgreSQL 16 on
NEWER_METHODS_FROM_MAJOR = 16


def readable_by_pg_restore(compression: str | None, pg_restore_major: int) -> bool:
    """Whether a pg_restore of this major decodes dumps of this compression (None: an older image, gzip)."""
    method = (compression or "gzip").split(":", 1)[0]
    return method in ("gzip", "none") or pg_restore_major >= NEWER_METHODS_FROM_MAJOR


@functools.cache
def local_pg_restore_major() -> int:
    version = subprocess.run(
        [str(newest_postgres_bindir() / "pg_restore"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(version.split(")", 1)[1].split(".")[0])


def check_file(
    blob: BlobStorageResource,
    prefix: str,
    expected: BackupFile,
    compression: str | None = None,
    encrypted: bool = False,
) -> FileCheck:
    """Every byte hashed; a single-file dump also read end to end by pg_restore, when this host's can
    decode it (a zstd dump of a 16+ source was read by the archive reader while it streamed). An
    encrypted file cannot be read without the key (which only restore jobs hold): it must be an age file."""
    name = f"{prefix.rstrip('/')}/{expected.path}"
    parse = (
        expected.kind == "database"
        and expected.archive is None
        and not encrypted
        and readable_by_pg_restore(compression, local_pg_restore_major())
    )
    actual = _hash_and_read(blob, name, is_dump=parse)
    if actual.size_bytes != expected.size_bytes:
        raise ImageCorrupt(
            f"{expected.path}: {actual.size_bytes} bytes in blob storage, manifest says {expected.size_bytes}"
        )
    if actual.sha256 != expected.sha256:
        raise ImageCorrupt(f"{expected.path}: sha256 {actual.sha256} in blob storage, manifest says {expected.sha256}")
    return actual.model_copy(update={"path": expected.path, "kind": expected.kind, "database": expected.database})


def check_age_header(blob: BlobStorageResource, name: str, path: str) -> None:
    if blob.read_head(name, len(AGE_HEADER)) != AGE_HEADER:
        raise ImageCorrupt(f"{path}: the manifest says it is age-encrypted, its bytes are not an age file")


def sampled_ranges(count: int) -> list[int]:
    """The first, the last and one random range: truncation shows in the size, a damaged start or
    end (the archive's header and trailer) in the hashes; the random one varies between checks."""
    if count <= 3:
        return list(range(count))
    return [0, random.SystemRandom().randrange(1, count - 1), count - 1]


def spot_check_file(blob: BlobStorageResource, prefix: str, expected: BackupFile) -> FileCheck:
    """The stored size and a sample of ranges against what the backup recorded while streaming."""
    stream = expected.stream_check
    assert stream is not None  # only called for a file the backup checked as it streamed
    name = f"{prefix.rstrip('/')}/{expected.path}"
    stored = blob.stored_size(name)
    if stored != expected.size_bytes:
        raise ImageCorrupt(f"{expected.path}: {stored} bytes in blob storage, manifest says {expected.size_bytes}")
    count = -(-expected.size_bytes // stream.chunk_bytes)
    if len(stream.chunk_sha256) != count:
        raise ImageCorrupt(
            f"{expected.path}: the manifest holds {len(stream.chunk_sha256)} range hashes, {count} expected"
        )
    checked = sampled_ranges(count)
    for index in checked:
        start = index * stream.chunk_bytes
        data = blob.read_range(name, start, min(stream.chunk_bytes, expected.size_bytes - start))
        if hashlib.sha256(data).hexdigest() != stream.chunk_sha256[index]:
            raise ImageCorrupt(
                f"{expected.path}: bytes {start}-{start + len(data) - 1} in blob storage differ from the stream "
                "(their sha256 does not match the one taken while it streamed)"
            )
    return FileCheck(
        path=expected.path,
        size_bytes=stored,
        sha256=expected.sha256,
        archive_readable=stream.archive_parsed or None,
        kind=expected.kind,
        database=expected.database,
        ranges_checked=len(checked),
        ranges_total=count,
    )


def read_manifest(
    blob: BlobStorageResource, prefix: str, expected_sha256: str | None = None
) -> tuple[BackupManifest, str]:
    """The manifest and the sha256 of its bytes, checked against `expected_sha256` before it is
    parsed: damaged bytes read as ImageCorrupt, never as a parse error."""
    try:
        raw = blob.read_bytes(f"{prefix.rstrip('/')}/{MANIFEST_NAME}")
    except ResourceNotFoundError as error:
        raise ImageCorrupt(f"{MANIFEST_NAME}: missing from blob storage under {prefix}") from error
    sha256 = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ImageCorrupt(f"{MANIFEST_NAME}: sha256 {sha256} in blob storage, the CMS recorded {expected_sha256}")
    try:
        return BackupManifest.model_validate_json(raw), sha256
    except ValueError as error:
        raise ImageCorrupt(f"{MANIFEST_NAME}: not a valid manifest: {error}") from error


def verify_image(
    blob: BlobStorageResource,
    prefix: str,
    expected_manifest_sha256: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    full: bool = True,
) -> tuple[BackupManifest, VerificationReport]:
    """Every file the manifest lists is present, byte-exact, and every dump is a readable archive.

    With `expected_manifest_sha256` (the CMS row's checksum) the manifest itself is pinned too.
    `full=False` (right after a backup) relies on what the backup proved while streaming and reads
    back only each file's size and a sample of ranges; a file without that proof is read in full.
    Each file's result is logged as it is checked, then the verdict.
    """
    manifest, manifest_sha256 = read_manifest(blob, prefix, expected_manifest_sha256)
    listed = {f.path for f in manifest.files}
    stored = {name.removeprefix(prefix.rstrip("/") + "/") for name in blob.list_names(prefix)} - {MANIFEST_NAME}
    if listed - stored:
        raise ImageCorrupt(f"missing from blob storage: {sorted(listed - stored)}")
    if not any(f.kind == "globals" for f in manifest.files) or not any(f.kind == "database" for f in manifest.files):
        raise ImageCorrupt("the manifest must list the roles (globals) and at least one database dump")
    log(f"verifying {len(manifest.files)} files ({human_bytes(manifest.total_bytes)}) against manifest.json")
    checks = []
    encrypted = manifest.encryption is not None
    streamed = not full and all(
        f.stream_check is not None and (f.kind != "database" or f.stream_check.archive_parsed) for f in manifest.files
    )
    for expected in manifest.files:
        if streamed:
            check = spot_check_file(blob, prefix, expected)
        else:
            check = check_file(blob, prefix, expected, manifest.compression, encrypted)
        if encrypted:
            check_age_header(blob, f"{prefix.rstrip('/')}/{expected.path}", expected.path)
            check = check.model_copy(update={"encrypted": True})
        log(f"verified {check.path} ({check.holds}, {human_bytes(check.size_bytes)}): {check.verdict}")
        checks.append(check)
    # An encrypted archive's TOC cannot be read without the key: the restore reads it.
    for archive, listed_files in directory_archives(manifest).items() if manifest.encryption is None else ():
        entries = check_directory_archive(blob, prefix, archive, listed_files)
        log(f"pg_restore lists the archive {archive} ({entries} entries), every data file it names is verified")
    log(f"image verified: {len(checks)} files, {human_bytes(manifest.total_bytes)}, manifest sha256 {manifest_sha256}")
    return manifest, VerificationReport(
        manifest_sha256=manifest_sha256,
        total_bytes=manifest.total_bytes,
        files=checks,
        method=STREAMED_METHOD if streamed else FULL_METHOD,
    )


def directory_archives(manifest: BackupManifest) -> dict[str, list[BackupFile]]:
    """The directory-format dumps (parallel mode) of the manifest: archive -> its files."""
    archives: dict[str, list[BackupFile]] = {}
    for entry in manifest.files:
        if entry.archive is not None:
            archives.setdefault(entry.archive, []).append(entry)
    return archives


TABLE_DATA_ENTRY = re.compile(r"^(\d+); \d+ \d+ TABLE DATA ", re.MULTILINE)


def check_directory_archive(blob: BlobStorageResource, prefix: str, archive: str, files: list[BackupFile]) -> int:
    """A directory-format dump parses (`pg_restore --list` reads its toc.dat) and is whole: every
    table's data file the TOC names is one of the archive's (already hashed) files. Only toc.dat
    is downloaded; the data files were verified by their sha256. Returns the number of entries."""
    names = {f.path.removeprefix(f"{archive}/"): f for f in files}
    toc = names.get("toc.dat")
    if toc is None:
        raise ImageCorrupt(f"{archive}: the manifest lists no toc.dat for this directory-format dump")
    toc_bytes = blob.read_bytes(f"{prefix.rstrip('/')}/{toc.path}")
    if hashlib.sha256(toc_bytes).hexdigest() != toc.sha256:
        raise ImageCorrupt(f"{toc.path}: changed in blob storage since it was verified")
    with tempfile.TemporaryDirectory(prefix="toygres-verify-") as scratch:
        (Path(scratch) / "toc.dat").write_bytes(toc_bytes)
        listed = subprocess.run(
            [str(newest_postgres_bindir() / "pg_restore"), "--list", scratch],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if listed.returncode != 0:
        message = listed.stderr.strip() or f"exit code {listed.returncode}"
        raise ImageCorrupt(f"{archive}: pg_restore cannot list the archive: {message}")
    data_files = {name.split(".", 1)[0] for name in names if name.endswith(".dat") or ".dat." in name}
    missing = [dump_id for dump_id in TABLE_DATA_ENTRY.findall(listed.stdout) if dump_id not in data_files]
    if missing:
        raise ImageCorrupt(f"{archive}: the archive's TOC names data files the manifest lacks: {missing[:10]}")
    return sum(1 for line in listed.stdout.splitlines() if line[:1].isdigit())


def sha256sums(manifest: BackupManifest) -> str:
    """The manifest's files in `sha256sum --check` format, for the restore script."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in manifest.files)
